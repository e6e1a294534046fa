"""Pickles are untrusted: a file that tries to run code on load is refused and nothing runs."""
import os
import sys
import types

import pytest
import torch

import scg_models
from scg_models import UnsafeCheckpointError, formats
from scg_testing.authors_files import ae_factors


class _RunsCode:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _plant(path, payload):
    sd = {"lgn_ende.0.conv." + k: v for k, v in ae_factors().items()}
    torch.save({"arg": payload, "state_dict": sd}, path)


@pytest.mark.parametrize("how", ["os.system", "exec", "eval", "subprocess"])
def test_code_on_load_is_refused_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}"
    payload = {
        "os.system": lambda: _RunsCode(os.system, cmd),
        "exec": lambda: _RunsCode(exec, f"open({str(marker)!r}, 'w').close()"),
        "eval": lambda: _RunsCode(eval, f"open({str(marker)!r}, 'w')"),
        "subprocess": lambda: _RunsCode(__import__("subprocess").call, ["touch", str(marker)]),
    }[how]()
    path = tmp_path / "evil.pth"
    _plant(path, payload)
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        scg_models.load_autoencoder(path)
    with pytest.raises(UnsafeCheckpointError):
        formats.load_controlnet_file(path)
    assert not marker.exists(), "code from the checkpoint ran"


def test_a_tolerated_package_name_cannot_smuggle_a_call(tmp_path):
    """A Lightning-looking class whose reduce calls os.system is still refused."""
    marker = tmp_path / "pwned"
    mod = types.ModuleType("pytorch_lightning")
    sys.modules["pytorch_lightning"] = mod

    class Callback(_RunsCode):
        pass

    Callback.__module__ = "pytorch_lightning"
    mod.Callback = Callback
    try:
        _plant(tmp_path / "evil.ckpt", Callback(os.system, f"touch {marker}"))
    finally:
        del sys.modules["pytorch_lightning"]
    with pytest.raises(UnsafeCheckpointError, match="system"):
        scg_models.load_autoencoder(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_lightning_objects_are_inert(tmp_path):
    """Classes of data-only libraries are read as inert stand-ins, never called."""
    mod = types.ModuleType("omegaconf")
    sys.modules["omegaconf"] = mod

    class DictConfig:
        def __init__(self, **kw):
            self.content = kw

        def __setstate__(self, state):  # the real class would run this; the loader must not
            raise AssertionError("real class used")

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf", "DictConfig"
    mod.DictConfig = DictConfig
    path = tmp_path / "x.pth"
    try:
        sd = {"lgn_ende.0.conv." + k: v for k, v in ae_factors().items()}
        from scg_testing.authors_files import authors_arg

        torch.save({"arg": authors_arg(), "state_dict": sd, "hparams": DictConfig(lr=1e-5)}, path)
    finally:
        del sys.modules["omegaconf"]
    ae = scg_models.load_autoencoder(path)
    assert ae.n_vector == 16

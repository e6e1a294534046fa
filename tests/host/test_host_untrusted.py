"""Host tier: checkpoints load the same inside a real ComfyUI process as anywhere else.

ComfyUI's ``comfy.utils`` registers classes of its own with ``torch.serialization.add_safe_globals``
(a ``ModelCheckpoint``, numpy's ``scalar``, ``_codecs.encode`` returning None...). Our loader must
not pick those up: a Lightning checkpoint's classes stay our inert stand-ins, its bytes stay bytes.
"""
import types

import pytest
import torch

from scg_testing.authors_files import ae_factors, save_authors_ckpt
from scg_testing.hosts import find_host, host_version


@pytest.fixture(scope="module")
def comfy_utils():
    """The real ``comfy.utils`` of the host of this run, imported (it registers its safe globals)."""
    host = find_host()  # tests/host/conftest.py put it on sys.path (this module is collected only with a host)
    import comfy.utils

    return types.SimpleNamespace(utils=comfy.utils, version=host_version(host))


def test_host_registered_its_safe_globals(comfy_utils):
    """The hazard is real in this process: torch's own loader resolves the host's class."""
    names = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', '')}"
             for g in torch.serialization.get_safe_globals()}
    assert "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint" in names, comfy_utils.version


def test_lightning_checkpoint_resolves_our_stand_ins_in_the_host(comfy_utils, tmp_path):
    from scg_models import formats, load_autoencoder, safe_pickle

    path = tmp_path / "last.ckpt"
    factors = ae_factors(3)
    save_authors_ckpt(path, factors)
    ckpt = safe_pickle.safe_load(str(path))
    key = next(k for k in ckpt["callbacks"] if not isinstance(k, str))
    assert issubclass(key, safe_pickle.InertObject) and key is not comfy_utils.utils.ModelCheckpoint
    step = ckpt["optimizer_states"][0]["state"][0]["step"]  # np.int64: the host's `scalar` would give None
    assert isinstance(step, safe_pickle.InertObject) and step._qualname.endswith("multiarray.scalar")
    assert isinstance(step.args[1], bytes) and len(step.args[1]) == 8  # _codecs.encode ran as ours, not the host's
    ae = load_autoencoder(path)
    assert torch.equal(ae.gonlin.c2.weight, factors["c2.weight"])
    assert formats.load_controlnet_file(path).autoencoder is not None

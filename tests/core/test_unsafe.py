"""Pickles are untrusted: a file that tries to run code on load is refused and nothing runs."""
import io
import os
import re
import struct
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import scg_models
from scg_models import CheckpointError, UnsafeCheckpointError, formats, safe_pickle
from scg_testing import hostile
from scg_testing.authors_files import ae_factors, authors_arg, save_authors_ckpt

ROOT = Path(__file__).resolve().parents[2]


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


# --- bounded before anything is built (issue 10, item 1) ----------------------------------
def _cli_convert(path, tmp_path, timeout=120):
    """``python -m scg_models convert FILE``: the exit status, stderr, and whether a signal killed it."""
    out = tmp_path / "out.safetensors"
    r = subprocess.run([sys.executable, "-m", "scg_models", "convert", str(path), "--autoencoder", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert not out.exists()
    return r


@pytest.mark.parametrize("attack,match", [
    ("deep_tuple_key", "nested deeper than 256"),
    ("memo_shared_key", "tuple expands to more than|tuple key of"),
    ("deep_list", "nested deeper than 256"),
])
def test_crashing_pickle_is_a_clean_error_in_a_subprocess(tmp_path, attack, match):
    """Attacks that segfault or freeze an unbounded loader end in the CLI's error exit (2) with a
    message: never a signal (negative code), a hang (timeout) or a traceback."""
    path = hostile.ATTACKS[attack](tmp_path / f"{attack}.ckpt")
    assert path.stat().st_size < 1_100_000
    r = _cli_convert(path, tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert re.search(match, r.stderr) and "Traceback" not in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("attack,error,match", [
    ("stride0_view", UnsafeCheckpointError, "stride 0"),
    ("overlapping_view", UnsafeCheckpointError, "overlapping strides"),
    ("view_past_end", UnsafeCheckpointError, "needs 1073741824 elements, its storage holds 64"),
    ("storage_bomb", CheckpointError, "storage '0' holds 64 bytes, the pickle says 1099511627776"),
    ("unknown_globals", UnsafeCheckpointError, "evil_module_0"),
    ("allocation_call", UnsafeCheckpointError, r"builtins.bytearray\(int\): an allocation"),
    ("class_poisoning", UnsafeCheckpointError, r"BUILD \(set state\) on a global"),
    ("inst_opcode", UnsafeCheckpointError, "INST is not used by PyTorch checkpoints"),
    ("ext_opcode", UnsafeCheckpointError, "EXT1 is not used"),
    ("persid_text", UnsafeCheckpointError, "PERSID is not used"),
    ("compressed_member", CheckpointError, "compressed"),
    ("reduce_on_result", UnsafeCheckpointError, "REDUCE on a dict"),
    ("memo_index_bomb", UnsafeCheckpointError, "memo index 4294967295 after"),
    ("frame_bomb", UnsafeCheckpointError, "a frame of 4611686018427387904 bytes"),
])
def test_hostile_pickle_is_refused(tmp_path, attack, error, match):
    path = hostile.ATTACKS[attack](tmp_path / f"{attack}.ckpt")
    with pytest.raises(error, match=match):
        scg_models.load_autoencoder(path)


def test_amplifying_views_are_refused_in_process(tmp_path):
    for kind, match in [("stride0", "stride 0"), ("overlap", "overlapping strides")]:
        path = hostile.strided_view(tmp_path / f"{kind}.ckpt", kind)
        assert path.stat().st_size < 2048
        with pytest.raises(UnsafeCheckpointError, match=match):
            safe_pickle.safe_load(str(path))


def test_memo_shared_key_is_refused_quickly(tmp_path):
    path = hostile.memo_shared_key(tmp_path / "m.ckpt", levels=80)
    assert path.stat().st_size < 2048
    t0 = time.perf_counter()
    with pytest.raises(UnsafeCheckpointError):
        safe_pickle.safe_load(str(path))
    assert time.perf_counter() - t0 < 5  # a bound on a hang, not a speed claim


def test_unknown_globals_are_collected_in_one_read(tmp_path, monkeypatch):
    """200 unknown globals next to 8 MB of weights: the file is opened once, its weights are never read,
    and every name is reported together."""
    path = hostile.unknown_globals(tmp_path / "g.ckpt", n=200, weights_bytes=8 << 20)
    assert path.stat().st_size > 8 << 20
    opened, read = [], [0]

    class CountingReader(io.BufferedReader):
        def read(self, n=-1):
            data = super().read(n)
            read[0] += len(data)
            return data

    def counting_open(file, mode="r", *a, **k):
        opened.append(file)
        return CountingReader(io.FileIO(file, "rb"))

    monkeypatch.setattr(safe_pickle, "open", counting_open, raising=False)
    with pytest.raises(UnsafeCheckpointError, match=r"'evil_module_0.payload'.*and 192 more") as e:
        safe_pickle.safe_load(str(path))
    assert opened == [str(path)], opened
    assert read[0] < 1 << 20, f"{read[0]} bytes read to refuse the file"
    assert "evil_module_199" not in str(e.value)  # listed by count, not all printed


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "eval"),
                                         ("builtins", "exec"), ("subprocess", "call"), ("builtins", "getattr")])
def test_planted_calls_never_run(tmp_path, module, name):
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if name in ("system", "call") else f"open({str(marker)!r}, 'w')"
    path = hostile.planted_call(tmp_path / "evil.ckpt", module, name, arg)
    with pytest.raises(UnsafeCheckpointError, match=f"{module}.{name}"):
        scg_models.load_autoencoder(path)
    assert not marker.exists()


def test_legacy_format_loads_and_is_bounded_too(tmp_path):
    sd = {"lgn_ende.0.conv." + k: v for k, v in ae_factors().items()}
    path = tmp_path / "legacy.pth"
    torch.save({"arg": authors_arg(), "state_dict": sd}, path, _use_new_zipfile_serialization=False)
    ae = scg_models.load_autoencoder(path)
    assert torch.equal(ae.gonlin.c2.weight, sd["lgn_ende.0.conv.c2.weight"])
    evil = tmp_path / "evil_legacy.pth"
    torch.save({"arg": _RunsCode(os.system, "true"), "state_dict": sd}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        scg_models.load_autoencoder(evil)
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        scg_models.load_autoencoder(tmp_path / "cut.pth")


def test_shared_storages_and_views_load_as_saved(tmp_path):
    """Tied weights and views of one storage (legitimate) keep their values and sharing."""
    base = torch.randn(4, 6)
    sd = {"a": base, "b": base[1], "c": base.t(), "d": base[:, ::2]}
    path = tmp_path / "views.ckpt"
    torch.save({"state_dict": sd}, path)
    got = safe_pickle.safe_load(str(path))["state_dict"]
    for k, v in sd.items():
        assert torch.equal(got[k], v), k
    assert got["b"].data_ptr() == got["a"][1].data_ptr()


# --- legitimate Lightning checkpoints (issue 10, item 2) -----------------------------------
def test_lightning_checkpoint_loads_with_inert_stand_ins(tmp_path):
    """hyper_parameters, callbacks and optimizer state of a Lightning .ckpt load as data; nothing runs."""
    path = tmp_path / "last.ckpt"
    save_authors_ckpt(path, ae_factors())
    ckpt = safe_pickle.safe_load(str(path))
    hp = ckpt["hyper_parameters"]
    config = hp["config"]
    assert isinstance(config, safe_pickle.InertObject) and config._qualname == "omegaconf.dictconfig.DictConfig"
    content = config.state["_content"]
    assert content["learning_rate"].state["_val"] == 1e-5
    assert content["hint_channels"]._qualname == "omegaconf.listconfig.ListConfig"
    assert hp["tags"] == {"scg", "hc3"} and hp["frozen"] == frozenset({1, 2}) and hp["sizes"] == (512, 512)
    assert type(hp["counts"]) is dict and hp["counts"] == {"a": 1}  # a defaultdict's factory is never kept
    assert list(hp["order"].items()) == [("b", 2), ("a", 1)] and hp["type"] is int
    assert hp["mean"]._qualname.startswith("numpy.") and isinstance(hp["mean"], safe_pickle.InertObject)
    callbacks = ckpt["callbacks"]
    class_key = next(k for k in callbacks if not isinstance(k, str))
    assert issubclass(class_key, safe_pickle.InertObject)
    assert class_key._qualname == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert callbacks[class_key]["last_model_path"] == "/etc/passwd"  # a stored path is data, never used
    assert torch.equal(callbacks[class_key]["best_model_score"], torch.tensor(0.1))
    assert ckpt["optimizer_states"][0]["state"][0]["step"]._qualname.startswith("numpy.")
    assert scg_models.load_autoencoder(path).n_vector == 16
    assert formats.load_controlnet_file(path).autoencoder is not None


def test_lightning_checkpoint_loads_where_torch_has_other_safe_globals(tmp_path):
    """A host that registers its own classes with torch (as ComfyUI does) changes nothing for us."""
    path = tmp_path / "last.ckpt"
    save_authors_ckpt(path, ae_factors())

    class ModelCheckpoint:
        def __setstate__(self, state):
            raise AssertionError("the host's class was used")

    ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
    with torch.serialization.safe_globals([ModelCheckpoint]):
        ckpt = safe_pickle.safe_load(str(path))
    key = next(k for k in ckpt["callbacks"] if not isinstance(k, str))
    assert key is not ModelCheckpoint and issubclass(key, safe_pickle.InertObject)


@pytest.mark.parametrize("legacy", [False, True])
def test_legitimate_contents_load_as_torch_load_does(tmp_path, legacy):
    """Every dtype, 0-dim and empty tensors, views, parameters and plain containers: equal to torch.load's."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 7, generator=g)
    obj = {f"t_{dt}".replace("torch.", ""): torch.randn(3, 4, generator=g).to(dt) for dt in
           (torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.uint8, torch.bool,
            torch.complex64)}
    obj.update({"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "view": base[1:, ::3], "t": base.t(),
                "param": torch.nn.Parameter(torch.ones(2)), "nested": [1, (2.0, "x"), {"k": None}], "big": 2**70,
                "bytes": b"\x00\xff", "set": {1, 2}})
    if not legacy:
        obj["fp8"] = torch.randn(4, generator=g).to(torch.float8_e4m3fn)
    path = tmp_path / "c.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    ref = torch.load(path, weights_only=True)
    got = safe_pickle.safe_load(str(path))
    assert set(got) == set(ref)
    for k, v in ref.items():
        if isinstance(v, torch.Tensor):
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
            assert torch.equal(got[k].view(torch.uint8) if v.dtype.itemsize == 1 and v.is_floating_point() else got[k],
                               v.view(torch.uint8) if v.dtype.itemsize == 1 and v.is_floating_point() else v), k
        else:
            assert got[k] == v, k


def test_storages_saved_on_a_gpu_by_old_torch_load_on_the_cpu(tmp_path):
    """Old checkpoints name ``torch.cuda.FloatStorage`` and location ``cuda:0``: read as CPU data."""
    pkl = hostile.state_dict([("w", hostile.tensor("0", "FloatStorage", 2, (2,), (1,), module="torch.cuda",
                                                   location="cuda:0"))])
    assert b"torch.cuda" in pkl
    path = hostile.write_archive(tmp_path / "gpu.ckpt", pkl, {"0": struct.pack("<2f", 1.5, -2.0)})
    w = safe_pickle.safe_load(str(path))["state_dict"]["w"]
    assert w.device.type == "cpu" and w.tolist() == [1.5, -2.0]

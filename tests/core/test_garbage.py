"""Garbage is an error, never a success: configs and weights of every format (issue 10, items 3 and 6)."""
import errno
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import scg_models
from scg_models import CheckpointError, SCGError, formats
from scg_models.autoencoder import MAX_KERNEL_ABS
from scg_models.errors import FileWriteError
from scg_testing.authors_files import ae_factors, authors_arg, save_authors_ckpt, save_authors_pth
from scg_testing.core import images, random_ae


def _ours(path, *, config=None, factors=None):
    """Our format, with the config and/or the factor weights replaced (written raw, unchecked)."""
    ae = random_ae()
    meta = formats.autoencoder_metadata(ae)
    if config:
        cfg = json.loads(meta["scg_autoencoder"])
        cfg.update(config)
        meta["scg_autoencoder"] = json.dumps(cfg)  # NaN and Infinity are written as JSON allows them
    tensors = {k: v.clone() for k, v in ae.state_dict().items()}
    for k, v in (factors or {}).items():
        tensors["gonlin." + k] = v
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("field,value,match", [
    ("std", [float("nan"), 0.25, 0.27], r"std\[0\]: nan is not a finite number in \[0.001, 1000\]"),
    ("std", [0.26, 0.0, 0.27], r"std\[1\]: 0.0"),
    ("std", [0.26, 0.25, 1e-45], r"std\[2\]: 1e-45"),
    ("mean", [float("inf"), 0.5, 0.5], r"mean\[0\]: inf"),
    ("mean", [0.5, 0.5], r"mean: expected 3 numbers"),
    ("padding", -1, r"padding: -1 is out of range; expected an integer in 0..20"),
    ("padding", 10**6, r"padding: 1000000 is out of range"),
    ("n_vector", 10**9, r"n_vector: 1000000000 is out of range; expected an integer in 1..1024"),
    ("n_vector", "16", r"n_vector: expected an integer"),
    ("vector_length", 2.5, r"vector_length: expected an integer"),
    ("stride", 0, r"stride: 0 is out of range"),
    ("groups", "HC0", r"groups: expected a list"),
])
def test_bad_config_in_our_format_names_the_field(tmp_path, field, value, match):
    path = _ours(tmp_path / "ae.safetensors", config={field: value})
    with pytest.raises(CheckpointError, match=match):
        scg_models.load_autoencoder(path)


def test_channel_and_parameter_bounds_refuse_before_allocating():
    with pytest.raises(SCGError, match="channels; at most 4096"):
        scg_models.AutoencoderConfig(n_vector=1024, vector_length=256).validate()
    with pytest.raises(SCGError, match="would hold .* weights; at most 16777216"):
        scg_models.ModularAutoencoder(scg_models.AutoencoderConfig(gonlin="Vanilla", n_vector=1024, vector_length=4,
                                                                   kernel_size=63))


def _nan(t):
    t = t.clone()
    t.view(-1)[3] = float("nan")
    return t


WEIGHT_CASES = [
    ("nan", lambda f: {**f, "c2.weight": _nan(f["c2.weight"])}, r"non-finite values in gonlin.c2.weight"),
    ("inf", lambda f: {**f, "c1_1.weight": f["c1_1.weight"] / 0}, r"non-finite values in gonlin.c1_1.weight"),
    ("huge", lambda f: {k: v * 1e15 for k, v in f.items()}, r"weights out of range: gonlin.c1_1.weight reaches .* \(a trained autoencoder's weights stay below 1000\)"),
    ("big", lambda f: {**f, "c2.weight": f["c2.weight"] * 1e6}, r"weights out of range: gonlin.c2.weight reaches"),
    ("composite", lambda f: {k: v * 300 for k, v in f.items()},
     r"weights out of range: the composite kernel reaches .* \(a trained autoencoder stays below 100\); largest"),
    ("one_huge", lambda f: {**f, "c1_1.weight": f["c1_1.weight"] * 0 + 3e38},
     r"gonlin.c1_1.weight reaches 3e\+38"),
    ("fp8", lambda f: {**f, "c2.weight": f["c2.weight"].to(torch.float8_e4m3fn)},
     r"'gonlin.c2.weight' has dtype torch.float8_e4m3fn; expected fp16, bf16, fp32 or fp64 \(convert fp8"),
    ("int", lambda f: {**f, "c2.weight": f["c2.weight"].long()}, r"dtype torch.int64"),
]


@pytest.mark.parametrize("fmt", ["ours", "authors_pth", "authors_ckpt"])
@pytest.mark.parametrize("case,mutate,match", WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_bad_weights_in_every_format(tmp_path, fmt, case, mutate, match):
    factors = mutate(ae_factors())
    path = tmp_path / {"ours": "ae.safetensors", "authors_pth": "ae.pth", "authors_ckpt": "last.ckpt"}[fmt]
    if fmt == "ours":
        _ours(path, factors=factors)
    elif fmt == "authors_pth":
        save_authors_pth(path, factors)
    else:
        save_authors_ckpt(path, factors, lightning_junk=False)
    with pytest.raises(CheckpointError, match=match) as e:
        scg_models.load_autoencoder(path)
    assert "holds no SCG autoencoder" not in str(e.value) and str(path) in str(e.value)
    if fmt == "authors_ckpt":  # a ControlNet file whose embedded autoencoder is garbage is refused, not stripped
        with pytest.raises(CheckpointError, match=match):
            formats.load_controlnet_file(path)


@pytest.mark.parametrize("fmt", ["authors_pth", "authors_ckpt"])
def test_meta_tensors_are_an_error(tmp_path, fmt):
    factors = ae_factors()
    factors["c2.weight"] = torch.empty(64, 1, 5, 5, device="meta")
    path = tmp_path / "m.pth"
    (save_authors_pth if fmt == "authors_pth" else lambda p, f: save_authors_ckpt(p, f, lightning_junk=False))(
        path, factors)
    with pytest.raises(CheckpointError, match=r"'gonlin.c2.weight' is a meta tensor"):
        scg_models.load_autoencoder(path)


def test_released_magnitudes_are_far_inside_the_bound():
    ae = scg_models.load_autoencoder(scg_models.__path__[0] + "/weights/scg_default.safetensors")
    assert float(ae.kernel().abs().max()) < MAX_KERNEL_ABS / 100
    h = ae.hint(images(1, 64, 64), "all")
    assert torch.isfinite(h).all()


@pytest.mark.parametrize("arg,match", [
    ({"n_vector": []}, r"arg.n_vector: expected one value, got 0"),
    ({"n_vector": ["abc"]}, r"arg.n_vector: expected an integer, got 'abc'"),
    ({"rot_num": [0]}, r"arg.rot_num: 0 is not a positive integer"),
    ({"n_vector": [10**9]}, r"n_vector: 1000000000 is out of range"),
    ({"lgn_stride": -4}, r"stride: -4 is out of range"),
])
def test_authors_arg_garbage_is_a_checkpoint_error(tmp_path, arg, match):
    """No raw IndexError, ValueError or ZeroDivisionError from the authors' ``arg``."""
    path = tmp_path / "a.pth"
    save_authors_pth(path, ae_factors(), authors_arg(**arg))
    with pytest.raises(CheckpointError, match=match):
        scg_models.load_autoencoder(path)


def test_empty_and_odd_factor_shapes_are_checkpoint_errors(tmp_path):
    for shape, match in [((0, 1, 5, 5), "4 non-empty dims"), ((64, 5), "4 non-empty dims")]:
        factors = ae_factors()
        factors["c2.weight"] = torch.zeros(shape)
        path = tmp_path / "e.ckpt"
        save_authors_ckpt(path, factors, lightning_junk=False)
        with pytest.raises(CheckpointError, match=match):
            scg_models.load_autoencoder(path)


def test_non_string_state_dict_keys_are_refused(tmp_path):
    path = tmp_path / "k.pth"
    torch.save({"state_dict": {("a", "b"): torch.zeros(1), "lgn_ende.0.conv.c2.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="state dict key of type tuple"):
        scg_models.load_autoencoder(path)


def test_bad_json_metadata_is_a_checkpoint_error(tmp_path):
    ae = random_ae()
    for text, match in [("[" * 100_000, "bad scg_autoencoder metadata"), ("[1, 2]", "expected a JSON object"),
                        ('{"n_vector": 16, "bogus": 1}', "unknown field")]:
        path = tmp_path / "m.safetensors"
        save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(path), metadata={"scg_autoencoder": text})
        with pytest.raises(CheckpointError, match=match):
            scg_models.load_autoencoder(path)


# --- disk full (issue 10, item 6) ------------------------------------------------------------
def _disk_full_after_half(calls):
    """A save_file that writes half the file, then fails as a full disk does."""
    def writer(tensors, filename, metadata=None):
        calls.append(filename)
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")
    return writer


@pytest.mark.parametrize("what", ["autoencoder", "controlnet"])
def test_disk_full_is_a_project_error_and_leaves_nothing(tmp_path, monkeypatch, what):
    out = tmp_path / "models" / ("ae.safetensors" if what == "autoencoder" else "cn.safetensors")
    calls = []
    monkeypatch.setattr(formats, "save_file", _disk_full_after_half(calls))
    with pytest.raises(FileWriteError, match=r"cannot write \(No space left on device\); nothing was written"):
        if what == "autoencoder":
            scg_models.save_autoencoder(random_ae(), out)
        else:
            cn = formats.ControlNetFile({"input_hint_block.0.weight": torch.zeros(2)}, random_ae(), {})
            formats.save_controlnet(cn, out)
    assert len(calls) == 1 and not calls[0].endswith((".safetensors", ".ckpt", ".pth", ".pt", ".bin"))
    assert list(out.parent.iterdir()) == []  # no partial file, no temporary file


def test_temporary_name_is_never_a_model_extension(tmp_path, monkeypatch):
    seen = []
    real = formats.save_file
    monkeypatch.setattr(formats, "save_file", lambda t, f, metadata=None: seen.append(f) or real(t, f, metadata=metadata))
    scg_models.save_autoencoder(random_ae(), tmp_path / "ae.safetensors")
    assert len(seen) == 1 and seen[0].endswith(formats.TEMP_SUFFIX) and not seen[0].endswith(".safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.safetensors"]
    assert math.isfinite(float(scg_models.load_autoencoder(tmp_path / "ae.safetensors").kernel().sum()))


def test_cli_reports_garbage_files_without_traceback(tmp_path):
    """The command line turns every loader error into its error exit (2) with the message."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    factors = ae_factors()
    factors["c2.weight"] = factors["c2.weight"] * float("nan")
    save_authors_pth(tmp_path / "nan.pth", factors)
    save_authors_pth(tmp_path / "zero.pth", ae_factors(), authors_arg(rot_num=[0]))
    for name, match in [("nan.pth", "non-finite values in gonlin.c2.weight"), ("zero.pth", "arg.rot_num: 0")]:
        r = subprocess.run([sys.executable, "-m", "scg_models", "convert", str(tmp_path / name), "--autoencoder",
                            str(tmp_path / "o.safetensors")], cwd=root, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert not (tmp_path / "o.safetensors").exists()


def test_safetensors_header_that_is_not_json(tmp_path):
    for body, match in [(b'{"a":' + b"[" * 200_000, "header is not valid JSON"), (b'{"a": 1', "not valid JSON")]:
        path = tmp_path / "h.safetensors"
        path.write_bytes(len(body).to_bytes(8, "little") + body)
        with pytest.raises(CheckpointError, match=match):
            scg_models.load_autoencoder(path)

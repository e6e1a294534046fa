"""Every file format: ours (round trip), the authors' .pth and .ckpt, converted ControlNets."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import scg_models
from scg_models import AUTHORS_GROUPS, CheckpointError, formats
from scg_testing.authors_files import ae_factors, authors_arg, save_authors_ckpt, save_authors_pth, tiny_controlnet_keys
from scg_testing.core import images, random_ae

ROOT = Path(__file__).resolve().parents[2]
AUTHORS_ORDER = [(n, list(m)) for n, m, _ in AUTHORS_GROUPS]


def _factors_of(ae):
    return {k.removeprefix("gonlin."): v for k, v in ae.state_dict().items()}


@pytest.mark.parametrize("gonlin,kw", [("Bipolar", {}), ("Bipolar_ks3", {}), ("Bipolar_1x1", {}),
                                       ("Vanilla", {"kernel_size": 9, "stride": 2}), ("Vanilla_2layer", {}),
                                       ("Vanilla_2layer_nogroup", {"activation": "gelu"})])
def test_canonical_round_trip_exact(tmp_path, gonlin, kw):
    ae = random_ae(gonlin, n_vector=5, vector_length=3, **kw)
    ae.set_groups([{"name": "edges", "modules": [4, 1], "description": "oriented"}, {"name": "rest", "modules": [0]}])
    path = tmp_path / "ae.safetensors"
    scg_models.save_autoencoder(ae, path, info={"steps": 7})
    back = scg_models.load_autoencoder(path)
    assert back.config.to_dict() == {**ae.config.to_dict(), "info": {"steps": 7}}
    for k, v in ae.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert list(back.groups.items()) == [("edges", [4, 1]), ("rest", [0])]
    assert back.group_descriptions["edges"] == "oriented"
    x = images(1, 40, 40)
    assert torch.equal(back.hint(x, "edges"), ae.hint(x, "edges"))
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["scg_autoencoder"])
    for key in ("gonlin", "n_vector", "vector_length", "stride", "padding", "activation", "mean", "std", "groups"):
        assert key in meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.safetensors"], "temporary file left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_authors_pth(tmp_path):
    factors = ae_factors()
    path = tmp_path / "equ_nv16_vl4_rn1_Bipolar_norm.pth"
    save_authors_pth(path, factors)
    ae = scg_models.load_autoencoder(path)
    assert (ae.config.gonlin, ae.n_vector, ae.vector_length, ae.stride, ae.padding) == ("Bipolar", 16, 4, 4, 10)
    assert list(ae.groups.items()) == AUTHORS_ORDER
    for k, v in factors.items():
        assert torch.equal(ae.gonlin.state_dict()[k], v)
    assert not any(p.requires_grad for p in ae.parameters()) and not ae.training


def test_authors_pth_stride_comes_from_arg(tmp_path):
    path = tmp_path / "s2.pth"
    save_authors_pth(path, ae_factors(), authors_arg(lgn_stride=2))
    assert scg_models.load_autoencoder(path).stride == 2
    assert scg_models.load_autoencoder(path).output_size(512, 512) == (511, 511)


def test_authors_ckpt_with_lightning_entries(tmp_path):
    factors = ae_factors(3)
    path = tmp_path / "last.ckpt"
    save_authors_ckpt(path, factors)
    ae = scg_models.load_autoencoder(path)
    assert list(ae.groups.items()) == AUTHORS_ORDER and ae.stride == 4
    for k, v in factors.items():
        assert torch.equal(ae.gonlin.state_dict()[k], v)
    cn = formats.load_controlnet_file(path)
    assert cn.autoencoder is not None
    assert not any(k.startswith(("control_model.", "model.", "first_stage_model", "cond_stage_model", "hypercolumn"))
                   for k in cn.state_dict)


def test_controlnet_key_layout_is_comfyuis():
    tensors = {"control_model." + k: v for k, v in tiny_controlnet_keys().items()}
    tensors["control_model.input_hint_block_new.0.lgn_ende.conv.c2.weight"] = torch.zeros(64, 1, 5, 5)
    tensors["control_model.hypercolumn.lgn_ende.conv.c2.weight"] = torch.zeros(64, 1, 5, 5)
    tensors["model.diffusion_model.out.0.weight"] = torch.zeros(1)
    sd = formats.controlnet_state_dict(tensors)
    # ComfyUI's cldm ControlNet: 15-module hint block, convs at even indices 0..14
    assert sorted(k for k in sd if k.startswith("input_hint_block")) == sorted(
        f"input_hint_block.{i}.{p}" for i in range(0, 15, 2) for p in ("weight", "bias"))
    assert torch.equal(sd["input_hint_block.0.weight"], tensors["control_model.input_hint_block_new.1.weight"])
    assert torch.equal(sd["input_hint_block.14.bias"], tensors["control_model.input_hint_block_new.15.bias"])
    assert {"zero_convs.0.0.weight", "input_blocks.0.0.weight", "middle_block_out.0.weight"} <= set(sd)
    assert len(sd) == 16 + 4  # hint block, zero conv (w, b), input block, middle out


def test_controlnet_missing_is_an_error():
    with pytest.raises(CheckpointError, match="no ControlNet"):
        formats.controlnet_state_dict({"model.x": torch.zeros(1)}, "f.ckpt")


def test_convert_cli(tmp_path):
    src = tmp_path / "last.ckpt"
    factors = ae_factors(5)
    save_authors_ckpt(src, factors)
    out_cn, out_ae = tmp_path / "scg_hc3.safetensors", tmp_path / "scg_ae.safetensors"
    r = subprocess.run([sys.executable, "-m", "scg_models", "convert", str(src), "--controlnet", str(out_cn),
                        "--autoencoder", str(out_ae), "--dtype", "fp16"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ControlNet" in r.stdout and "autoencoder Bipolar 16x4" in r.stdout and r.stdout.count("\n") == 1
    raw = formats.read_file(out_cn)
    cn_keys = [k for k in raw.tensors if not k.startswith("scg_autoencoder.")]
    assert all(raw.tensors[k].dtype == torch.float16 for k in cn_keys)
    assert "input_hint_block.0.weight" in raw.tensors and "zero_convs.0.0.weight" in raw.tensors
    for path in (out_ae, out_cn):  # both carry the autoencoder, in fp32, exactly
        ae = scg_models.load_autoencoder(path)
        for k, v in factors.items():
            assert torch.equal(ae.gonlin.state_dict()[k], v)
        assert list(ae.groups) == [n for n, _ in AUTHORS_ORDER]
    again = formats.load_controlnet_file(out_cn)
    assert set(again.state_dict) == set(cn_keys)


def test_convert_cli_reports_errors(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    r = subprocess.run([sys.executable, "-m", "scg_models", "convert", str(bad), "--autoencoder",
                        str(tmp_path / "o.safetensors")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown file format" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_format_detected_from_content_not_name(tmp_path):
    ae = random_ae()
    odd = tmp_path / "model.ckpt"  # a safetensors file with a pickle's extension
    scg_models.save_autoencoder(ae, odd)
    assert torch.equal(scg_models.load_autoencoder(odd).kernel(), ae.kernel())
    pth = tmp_path / "weights.safetensors"  # a pickle with a safetensors name
    save_authors_pth(pth, ae_factors())
    assert scg_models.load_autoencoder(pth).config.gonlin == "Bipolar"


def test_load_to_device_and_dtype(tmp_path):
    path = tmp_path / "a.safetensors"
    scg_models.save_autoencoder(random_ae(), path)
    ae = scg_models.load_autoencoder(path, device="cpu", dtype=torch.float64)
    assert next(ae.parameters()).dtype == torch.float64
    assert ae.hint(images(1, 32, 32), "HC1").dtype == torch.float64

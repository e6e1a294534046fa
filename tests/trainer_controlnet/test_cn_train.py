"""The trainer end to end on the tiny SD1.5-architecture base (CPU)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from scg_testing.trainers import RES, controlnet_args, run_controlnet
from train import runtime

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def trained(files):
    """30 steps on 4 images (a 5th held out for the sample sheets) at a learning rate that shows."""
    out = files["root"] / "trained" / "scg_tiny.safetensors"
    summary = run_controlnet(controlnet_args(files, out, "--steps", "30", "--lr", "1e-3", "--samples", "1",
                                   "--sheet-every", "15", "--sample-steps", "2", "--eval-images", "4",
                                   "--log-every", "5"))
    return out, summary


def test_thirty_steps_lower_the_loss(trained):
    out, s = trained
    assert s["done"] and s["step"] == 30 and s["images"] == 4
    assert s["last_eval_loss"] < 0.9 * s["first_eval_loss"], s
    work = out.with_name("scg_tiny.train")
    log = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [5, 10, 15, 20, 25, 30]
    assert all(e["it_s"] > 0 for e in log if "loss" in e)
    assert s["final_losses"]["loss"] == [e for e in log if "loss" in e][-1]["loss"]
    sheets = sorted(p.name for p in (work / "sheets").glob("samples_*.png"))
    assert sheets == ["samples_00000015.png", "samples_00000030.png"]
    from PIL import Image

    assert Image.open(work / "sheets" / sheets[-1]).size == (3 * RES, RES)  # image | hint preview | sample


def test_output_loads_with_core_loader_and_controls(trained, files):
    import comfy.controlnet
    import comfy.sample

    from scg_models import formats, load_autoencoder
    from train import sd15
    from train.controlnet import autoencoder_sha256

    out, _ = trained
    # what LoadSCGControlNet reads: the autoencoder and the module selection travel in the file
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
    info = json.loads(meta["scg_controlnet"])
    assert info["modules"] == [0, 1, 4, 8, 9, 15] and info["selection"] == "HC0" and info["steps"] == 30
    assert info["hint"]["size"] == [RES - 3, RES - 3]
    cnf = formats.load_controlnet_file(out)
    assert cnf.autoencoder is not None
    assert autoencoder_sha256(cnf.autoencoder) == autoencoder_sha256(load_autoencoder(files["ae"]))
    assert info["autoencoder"]["sha256"] == autoencoder_sha256(cnf.autoencoder)
    # the file holds the trained weights (fp16 of the fp32 state)
    state = torch.load(runtime.checkpoints(out.with_name("scg_tiny.train"))[-1], weights_only=True)
    weights = load_file(str(out))
    for k, v in state["controlnet"].items():
        assert torch.equal(weights[k], v.half()), k
    assert weights["zero_convs.0.0.weight"].abs().sum() > 0  # trained away from zero

    # core's loader, as ControlNetLoader calls it
    cn = comfy.controlnet.load_controlnet(str(out))
    assert cn is not None and cn.control_model.input_hint_block[0].weight.shape[1] == 3
    # ... and the control it gives is not zero: sample with and without it
    base = sd15.load_base(files["base"])
    ae = cnf.autoencoder
    image = torch.rand(1, 3, RES, RES)
    hint = ae.hint(image, info["modules"])
    ctx = torch.randn(1, 77, 32)
    latent = torch.zeros(1, 4, RES // 8, RES // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))

    def gen(control):
        extra = {} if control is None else {"control": control, "control_apply_to_uncond": False}
        pos, neg = [[ctx, dict(extra)]], [[torch.zeros_like(ctx), dict(extra)]]
        return comfy.sample.sample(base.patcher, noise, 3, 2.0, "euler", "normal", pos, neg, latent, seed=0,
                                   disable_pbar=True)

    control = cn.copy().set_cond_hint(hint, 1.0, (0.0, 1.0))
    control.preprocess_image = lambda x: hint  # the exact raw hint, as training fed it
    delta = (gen(control) - gen(None)).abs().max()
    assert delta > 1e-4, delta


def test_stop_and_resume_is_bit_identical(files):
    root = files["root"] / "resume"
    common = ("--steps", "6", "--lr", "1e-3", "--seed", "3", "--caption-dropout", "0.5", "--no-gradient-checkpointing")
    straight = run_controlnet(controlnet_args(files, root / "a.safetensors", *common))
    first = run_controlnet(controlnet_args(files, root / "b.safetensors", *common, "--stop-after", "2"))
    assert first["step"] == 2 and not first["done"]
    second = run_controlnet(controlnet_args(files, root / "b.safetensors", *common, "--resume"))
    assert straight["step"] == second["step"] == 6 and second["done"]
    a = torch.load(runtime.checkpoints(root / "a.train")[-1], weights_only=True)
    b = torch.load(runtime.checkpoints(root / "b.train")[-1], weights_only=True)
    for k in a["controlnet"]:
        assert torch.equal(a["controlnet"][k], b["controlnet"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for name in sa[i]:
            assert torch.equal(sa[i][name], sb[i][name]), (i, name)
    assert load_file(str(root / "a.safetensors")).keys() == load_file(str(root / "b.safetensors")).keys()
    for k, v in load_file(str(root / "a.safetensors")).items():
        assert torch.equal(v, load_file(str(root / "b.safetensors"))[k]), k


def test_resume_refuses_a_different_run(files):
    from scg_models import SCGError

    root = files["root"] / "refuse"
    run_controlnet(controlnet_args(files, root / "c.safetensors", "--steps", "2", "--stop-after", "1",
                         "--no-gradient-checkpointing"))
    with pytest.raises(SCGError, match=r"cannot continue exactly: lr: saved 1e-05, now 0\.001"):
        run_controlnet(controlnet_args(files, root / "c.safetensors", "--steps", "2", "--lr", "1e-3", "--resume",
                             "--no-gradient-checkpointing"))


def test_bf16_autocast_path_runs(files):
    """The CUDA recipe's precision path (bf16 UNet weights, autocast), exercised on the CPU."""
    out = files["root"] / "bf16" / "d.safetensors"
    s = run_controlnet(controlnet_args(files, out, "--steps", "2", "--precision", "bf16", "--lr", "1e-3"))
    assert s["done"]
    w = load_file(str(out))
    assert all(v.dtype == torch.float16 for k, v in w.items() if not k.startswith("scg_autoencoder."))
    assert torch.isfinite(w["middle_block_out.0.weight"].float()).all()
    assert w["middle_block_out.0.weight"].abs().sum() > 0


def test_fine_tune_starts_from_a_given_controlnet(trained, files, tmp_path):
    from safetensors.torch import save_file

    from scg_models import SCGError

    src, _ = trained
    out = tmp_path / "ft.safetensors"
    s = run_controlnet(controlnet_args(files, out, "--steps", "5", "--stop-after", "0", "--init-controlnet", str(src)))
    assert s["step"] == 0
    start = torch.load(runtime.checkpoints(tmp_path / "ft.train")[-1], weights_only=True)["controlnet"]
    given = load_file(str(src))
    assert all(torch.equal(v, given[k].float()) for k, v in start.items())
    with safe_open(str(out), "pt") as fh:
        assert json.loads(fh.metadata()["scg_controlnet"])["init"] == src.name
    broken = {k: v for k, v in given.items() if k != "zero_convs.1.0.bias"}
    with safe_open(str(src), "pt") as fh:
        metadata = fh.metadata()  # the embedded autoencoder's config: the file is broken only where meant
    save_file(broken, str(tmp_path / "broken.safetensors"), metadata=metadata)
    with pytest.raises(SCGError, match="does not fit this base's ControlNet .*zero_convs.1.0.bias"):
        run_controlnet(controlnet_args(files, tmp_path / "x.safetensors", "--steps", "1", "--init-controlnet",
                             str(tmp_path / "broken.safetensors")))

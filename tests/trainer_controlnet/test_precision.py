"""The CUDA recipe's defaults exercised on the CPU: bf16 autocast with the frozen UNet stored in bf16
(a run, an exact resume) and ``--compile``."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from scg_testing.compile_check import compiler_or_skip, run_or_skip
from scg_testing.trainers import CONTROLNET_SCRIPT, controlnet_args, run_controlnet
from train import runtime

pytestmark = pytest.mark.host


def test_bf16_stores_the_frozen_unet_in_bf16_and_trains(files, monkeypatch):
    from train import cn_step

    seen = {}
    real = cn_step.Trainer.__init__

    def spy(self, base, *args, **kwargs):
        real(self, base, *args, **kwargs)
        seen["unet"] = {p.dtype for p in base.unet.parameters()}
        seen["controlnet"] = {p.dtype for p in self.controlnet.parameters()}

    monkeypatch.setattr(cn_step.Trainer, "__init__", spy)
    out = files["root"] / "bf16unet" / "e.safetensors"
    s = run_controlnet(controlnet_args(files, out, "--steps", "3", "--precision", "bf16", "--lr", "1e-3",
                                       "--log-every", "1"))
    assert s["done"] and s["step"] == 3
    assert seen == {"unet": {torch.bfloat16}, "controlnet": {torch.float32}}  # frozen bf16, trained fp32
    assert all(torch.isfinite(torch.tensor(v)) for v in s["final_losses"].values())
    w = load_file(str(out))
    assert w["middle_block_out.0.weight"].abs().sum() > 0  # the zero convolution learned


def test_bf16_stop_and_resume_is_bit_identical(files):
    root = files["root"] / "bf16resume"
    common = ("--steps", "4", "--lr", "1e-3", "--seed", "5", "--precision", "bf16")
    run_controlnet(controlnet_args(files, root / "a.safetensors", *common))
    first = run_controlnet(controlnet_args(files, root / "b.safetensors", *common, "--stop-after", "2"))
    assert first["step"] == 2 and not first["done"]
    second = run_controlnet(controlnet_args(files, root / "b.safetensors", *common, "--resume"))
    assert second["step"] == 4 and second["done"]
    a = torch.load(runtime.checkpoints(root / "a.train")[-1], weights_only=True)
    b = torch.load(runtime.checkpoints(root / "b.train")[-1], weights_only=True)
    assert a["recipe"]["precision"] == b["recipe"]["precision"] == "bf16"
    for k in a["controlnet"]:
        assert torch.equal(a["controlnet"][k], b["controlnet"][k]), k
    for i, state in a["optimizer"]["state"].items():
        for name in state:
            assert torch.equal(state[name], b["optimizer"]["state"][i][name]), (i, name)


def test_compile_trains_like_eager(files):
    """``--compile`` on the CPU (both networks compiled): the run lands where the eager one does.

    The losses agree to float rounding. The weights are compared within AdamW's step size: Adam
    divides each gradient by its own running size, so where a gradient is ~0 a rounding difference
    between compiled and eager kernels can flip an update of size lr (seen here: up to 0.9 lr)."""
    compiler_or_skip()
    root = files["root"] / "compile"
    lr, steps = 1e-3, 2
    common = ("--steps", str(steps), "--lr", str(lr), "--log-every", "1", "--no-gradient-checkpointing",
              "--comfyui", str(files["comfyui"]))
    run_controlnet(controlnet_args(files, root / "eager.safetensors", *common))
    run_or_skip([CONTROLNET_SCRIPT, *controlnet_args(files, root / "compiled.safetensors", *common, "--compile")],
                "2 compiled steps of the tiny ControlNet trainer")
    losses = [[r["loss"] for r in runtime.MetricsLog(root / f"{name}.train" / "metrics.jsonl", steps,
                                                      enabled=False).records() if "loss" in r]
              for name in ("eager", "compiled")]
    assert len(losses[0]) == steps and losses[1] == pytest.approx(losses[0], rel=1e-4)
    a = torch.load(runtime.checkpoints(root / "eager.train")[-1], weights_only=True)["controlnet"]
    b = torch.load(runtime.checkpoints(root / "compiled.train")[-1], weights_only=True)["controlnet"]
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 2 * lr * steps, worst

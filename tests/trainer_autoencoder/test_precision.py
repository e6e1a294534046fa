"""The CUDA defaults exercised on the CPU: bf16 autocast (a run, an exact resume) and ``--compile``."""
import os

import torch
from safetensors.torch import load_file

import scg_models
from scg_testing.compile_check import compiler_or_skip, run_or_skip
from scg_testing.trainers import TINY_AE, skimage_or_skip
from train import autoencoder as trainer
from train import runtime


def _final_state(work_dir):
    return torch.load(runtime.checkpoints(str(work_dir))[-1], weights_only=True)


def test_bf16_autocast_trains_on_the_cpu(tmp_path):
    skimage_or_skip()
    args = TINY_AE + ["--steps", "3", "--lr", "0.01"]
    fp32, bf16 = tmp_path / "fp32.safetensors", tmp_path / "bf16.safetensors"
    assert trainer.main(args + ["--out", str(fp32), "--precision", "fp32"]) == 0
    assert trainer.main(args + ["--out", str(bf16), "--precision", "bf16"]) == 0
    info = scg_models.load_autoencoder(bf16).config.info
    assert info["precision"] == "bf16-autocast"
    assert all(torch.isfinite(torch.tensor(v)) for v in info["final_losses"].values()), info["final_losses"]
    a, b = load_file(str(fp32)), load_file(str(bf16))
    # the master weights stay fp32; autocast changes the arithmetic, so the two runs part (slightly)
    assert all(v.dtype == torch.float32 for v in b.values())
    diff = max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())
    assert 0 < diff < 0.1, diff


def test_bf16_stop_and_resume_is_bit_identical(tmp_path):
    skimage_or_skip()
    args = TINY_AE + ["--steps", "6", "--lr", "0.01", "--precision", "bf16"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert trainer.main(args + ["--out", str(a)]) == 0
    assert trainer.main(args + ["--out", str(b), "--stop-after", "2"]) == 130
    # the precision is an option the checkpoint carries: the resumed run is bf16 again without saying so
    assert trainer.main(["--resume", "auto", "--out", str(b), "--no-progress", "--threads", "1"]) == 0
    sa, sb = _final_state(tmp_path / "a.train"), _final_state(tmp_path / "b.train")
    assert sa["step"] == sb["step"] == 6 and sb["options"]["precision"] == "bf16"
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for i, state in sa["optimizer"]["state"].items():
        for name in state:
            assert torch.equal(state[name], sb["optimizer"]["state"][i][name]), (i, name)
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_compile_trains_like_eager(tmp_path):
    """``--compile`` on the CPU: a compiled run lands where the eager run does (float tolerance)."""
    skimage_or_skip()
    compiler_or_skip()
    args = TINY_AE + ["--steps", "2", "--lr", "0.01", "--precision", "fp32"]
    eager, compiled = tmp_path / "eager.safetensors", tmp_path / "compiled.safetensors"
    assert trainer.main(args + ["--out", str(eager)]) == 0
    run_or_skip(["-m", "train.autoencoder", *args, "--out", str(compiled), "--compile"],
                "2 compiled steps of the tiny autoencoder trainer")
    a, b = load_file(str(eager)), load_file(str(compiled))
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)
    assert os.path.isdir(tmp_path / "compiled.train")

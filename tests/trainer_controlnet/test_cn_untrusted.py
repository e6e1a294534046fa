"""train.controlnet against strangers' files and bad numbers (the tiny SD1.5 base, CPU): a
non-finite loss is an error that keeps the last good checkpoint, --resume says what it does,
hostile data folders neither hang nor abort, and a resumed log has each step once."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from scg_testing.data_folders import hostile_folder
from scg_testing.trainers import CONTROLNET_SCRIPT, ROOT, child_env, controlnet_args, run_controlnet
from train import runtime
from train.runtime import TrainError

pytestmark = pytest.mark.host


def _info(path) -> dict:
    with safe_open(str(path), "pt") as fh:
        return json.loads(fh.metadata()["scg_controlnet"])


def test_an_autoencoder_whose_hints_are_not_finite_is_an_error_not_a_nan_model(files, tmp_path, capsys):
    from scg_models import ModularAutoencoder, save_autoencoder
    from train.controlnet import main

    ae = ModularAutoencoder()
    with torch.no_grad():
        for p in ae.parameters():
            p.mul_(1e30)  # finite weights whose hints overflow (NaN)
    save_autoencoder(ae, tmp_path / "huge.safetensors")
    argv = controlnet_args(files, tmp_path / "x.safetensors", "--steps", "3", "--no-gradient-checkpointing")
    argv[argv.index("--autoencoder") + 1] = str(tmp_path / "huge.safetensors")
    assert main(argv) == 2
    err = capsys.readouterr().err
    # refused when loaded, or stopped at the first non-finite loss: one line either way
    assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists() and runtime.checkpoints(tmp_path / "x.train") == []


def test_a_non_finite_loss_keeps_the_last_good_checkpoint(files, tmp_path, monkeypatch):
    from train.cn_step import Trainer

    real_step, calls = Trainer.step, []

    def step(self, batches, lr):
        calls.append(1)
        loss = real_step(self, batches, lr)
        return float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(Trainer, "step", step)
    out = tmp_path / "n.safetensors"
    with pytest.raises(TrainError, match="step 3: the loss is not finite"):
        run_controlnet(controlnet_args(files, out, "--steps", "6", "--ckpt-every", "2", "--keep", "5",
                                       "--no-gradient-checkpointing", "--lr", "1e-3"))
    assert [os.path.basename(p) for p in runtime.checkpoints(tmp_path / "n.train")] == ["step_00000002.pt"]
    assert _info(out)["steps"] == 2
    assert all(torch.isfinite(v.float()).all() for v in load_file(str(out)).values())


def test_resume_says_what_it_does(files, tmp_path, capsys):
    out = tmp_path / "r.safetensors"
    summary = run_controlnet(controlnet_args(files, out, "--steps", "1", "--resume", "--no-gradient-checkpointing"))
    assert summary["done"]
    assert f"--resume auto: no checkpoint in {tmp_path / 'r.train' / 'ckpts'}; starting fresh at step 0" in (
        capsys.readouterr().err)
    ae_ckpt = tmp_path / "ae.pt"
    torch.save({"format": runtime.CHECKPOINT_FORMAT, "trainer": "autoencoder", "step": 1}, ae_ckpt)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04not a pickle at all")
    for path, says in ((ae_ckpt, "a train.autoencoder checkpoint, not train.controlnet"),
                       (junk, "not a train.controlnet checkpoint"), (tmp_path / "none.pt", "no such checkpoint")):
        with pytest.raises(TrainError, match=says):
            run_controlnet(controlnet_args(files, out, "--steps", "2", "--resume", str(path),
                                           "--no-gradient-checkpointing"))


def test_a_hostile_data_folder_neither_hangs_nor_aborts(files, tmp_path):
    """A FIFO, a symlink loop and a bomb PNG are skipped and counted; the 16-bit PNG trains."""
    data = tmp_path / "data"
    data.mkdir()
    expected = hostile_folder(data, 5)
    out = tmp_path / "h.safetensors"
    argv = controlnet_args(files, out, "--steps", "2", "--no-gradient-checkpointing")
    argv[argv.index("--data") + 1] = str(data)
    r = subprocess.run([sys.executable, CONTROLNET_SCRIPT, *argv], cwd=ROOT, capture_output=True, text=True,
                       env=child_env(COMFYUI_PATH=str(files["comfyui"])), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = _info(out)
    assert info["skipped"] == expected and info["images"] == 6  # 5 ordinary images + the 16-bit one
    assert "skipped 3 (1 decompression bomb, 1 not a regular file, 1 symlink loop) image files" in r.stderr


def test_a_resumed_log_has_each_step_once(files, tmp_path):
    out = tmp_path / "d.safetensors"
    common = ("--steps", "6", "--log-every", "1", "--ckpt-every", "2", "--keep", "5", "--no-gradient-checkpointing")
    first = run_controlnet(controlnet_args(files, out, *common, "--stop-after", "3"))
    assert first["step"] == 3
    os.unlink(runtime.checkpoints(tmp_path / "d.train")[-1])  # killed after logging step 3, before its save
    second = run_controlnet(controlnet_args(files, out, *common, "--resume", "auto"))
    assert second["done"] and second["final_losses"]["loss"] > 0
    log = [json.loads(x) for x in (tmp_path / "d.train" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert _info(out)["final_losses"] == second["final_losses"]

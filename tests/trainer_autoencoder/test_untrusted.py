"""train.autoencoder against strangers' files and bad numbers: it never writes where a checkpoint
says, says what --resume does, refuses what is no checkpoint, stops on a non-finite loss keeping
the last good checkpoint, survives hostile data folders, and leaves no half-written model behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import scg_models
from scg_testing.data_folders import hostile_folder
from scg_testing.trainers import ROOT, TINY_AE, child_env, make_images
from train import autoencoder as trainer
from train import runtime
from train.runtime import TrainError


@pytest.fixture()
def data(tmp_path):
    make_images(tmp_path / "data", 6)
    return str(tmp_path / "data")


def _run(data, out, *extra):
    return trainer.main(TINY_AE + ["--data", data, "--out", str(out), *extra])


def test_resume_never_writes_where_the_checkpoint_says(tmp_path, data, capsys):
    out = tmp_path / "run" / "m.safetensors"
    assert _run(data, out, "--steps", "3", "--stop-after", "1") == 130
    state = torch.load(runtime.checkpoints(tmp_path / "run" / "m.train")[-1], weights_only=True)
    victim = tmp_path / "victim"
    state["options"].update(out=str(victim / "owned.safetensors"), work_dir=str(victim), groups=str(victim / "g"))
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    # no --out: an error, nothing written anywhere
    assert trainer.main(["--resume", str(crafted), "--no-progress"]) == 2
    assert "--out FILE.safetensors is required" in capsys.readouterr().err
    # --out given: the run writes there and only there
    mine = tmp_path / "mine" / "m.safetensors"
    assert trainer.main(["--resume", str(crafted), "--out", str(mine), "--no-progress"]) == 0
    assert mine.exists() and not victim.exists()
    assert scg_models.load_autoencoder(mine).config.info["steps"] == 3


def test_resume_auto_without_a_checkpoint_says_it_starts_fresh(tmp_path, data, capsys):
    out = tmp_path / "m.safetensors"
    assert _run(data, out, "--steps", "2", "--resume", "auto") == 0
    ckpts = tmp_path / "m.train" / "ckpts"
    assert f"--resume auto: no checkpoint in {ckpts}; starting fresh at step 0" in capsys.readouterr().err
    assert scg_models.load_autoencoder(out).config.info["steps"] == 2


def test_resume_refuses_what_is_not_a_checkpoint_in_one_line(tmp_path, data, capsys):
    out = tmp_path / "m.safetensors"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(300))
    plain = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.ones(2)}}, plain)
    scg_models.save_autoencoder(scg_models.ModularAutoencoder(), tmp_path / "ae.safetensors")
    other = tmp_path / "cn.pt"
    torch.save({"format": runtime.CHECKPOINT_FORMAT, "trainer": "controlnet", "step": 1}, other)
    for path, says in ((junk, "not a train.autoencoder checkpoint"), (plain, "not a train.autoencoder checkpoint"),
                       (tmp_path / "ae.safetensors", "not a train.autoencoder checkpoint"),
                       (other, "a train.controlnet checkpoint, not train.autoencoder"),
                       (tmp_path / "missing.pt", "no such checkpoint file")):
        assert _run(data, out, "--steps", "2", "--resume", str(path)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --resume ") and says in err and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert not out.exists()


def test_a_non_finite_loss_stops_with_an_error_and_keeps_the_last_good_checkpoint(tmp_path, data, capsys):
    out = tmp_path / "m.safetensors"
    # lr 1e30: step 1 is computed from sane weights (its checkpoint is good), step 2's loss overflows
    assert _run(data, out, "--steps", "4", "--lr", "1e30", "--ckpt-every", "1") == 2
    assert "step 2: the loss is not finite" in capsys.readouterr().err
    assert [os.path.basename(p) for p in runtime.checkpoints(tmp_path / "m.train")] == ["step_00000001.pt"]
    assert not out.exists()
    rows = [json.loads(line) for line in (tmp_path / "m.train" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["step"] <= 1 for r in rows)


def test_a_hostile_data_folder_neither_hangs_nor_aborts(tmp_path):
    """A FIFO, a symlink loop and a bomb PNG are skipped and counted; a 16-bit PNG trains."""
    data = tmp_path / "data"
    data.mkdir()
    expected = hostile_folder(data, 5)
    out = tmp_path / "m.safetensors"
    cmd = [sys.executable, "-m", "train.autoencoder", *TINY_AE, "--steps", "5", "--crop", "32", "--data", str(data),
           "--out", str(out), "--workers", "0"]
    r = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    info = scg_models.load_autoencoder(out).config.info
    assert info["skipped"] == expected and info["skipped_files"] == 3
    assert "skipped 3 (1 decompression bomb, 1 not a regular file, 1 symlink loop)" in r.stderr


def test_no_temporary_model_files_are_left_and_stale_ones_go(tmp_path, data):
    out = tmp_path / "m.safetensors"
    assert _run(data, out, "--steps", "2", "--stop-after", "1") == 130
    # what a run killed midway leaves behind (an older writer's name, and ours with a dead pid)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [tmp_path / ".tmp-k1ll3d.safetensors", tmp_path / f".m.safetensors.{dead}.partial",
             tmp_path / "m.train" / "ckpts" / f".step_00000002.pt.{dead}.partial"]
    for p in stale:
        p.write_bytes(b"half")
    assert trainer.main(["--resume", "auto", "--out", str(out), "--no-progress"]) == 0
    assert not any(p.exists() for p in stale)
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files
                 if f.startswith(".") or f.endswith(".partial")]
    assert leftovers == []


def test_final_losses_are_filled_even_when_the_resumed_run_has_no_step_left(tmp_path, data):
    out = tmp_path / "m.safetensors"
    assert _run(data, out, "--steps", "3") == 0
    first = scg_models.load_autoencoder(out).config.info["final_losses"]
    os.unlink(out)  # killed after the last checkpoint, before the model file was written
    assert trainer.main(["--resume", "auto", "--out", str(out), "--no-progress"]) == 0
    again = scg_models.load_autoencoder(out).config.info["final_losses"]
    assert again and again == first and again["loss"] > 0


def test_bad_checkpoint_options_are_refused(tmp_path, data):
    out = tmp_path / "m.safetensors"
    assert _run(data, out, "--steps", "3", "--stop-after", "1") == 130
    path = runtime.checkpoints(tmp_path / "m.train")[-1]
    state = torch.load(path, weights_only=True)
    state["options"]["log_every"] = 0
    torch.save(state, path)
    with pytest.raises(TrainError, match="--log-every must be an integer >= 1"):
        trainer.train(["--resume", "auto", "--out", str(out)])


def test_a_crafted_checkpoint_is_a_clear_error_not_a_traceback(tmp_path, data):
    out = tmp_path / "m.safetensors"
    assert _run(data, out, "--steps", "3", "--stop-after", "1") == 130
    path = runtime.checkpoints(tmp_path / "m.train")[-1]
    good = torch.load(path, weights_only=True)
    for change, says in (({"options": {**good["options"], "threads": "all"}}, "options: threads is 'all'"),
                         ({"recipe": {**good["recipe"], "steps": "many"}}, "recipe: steps is 'many'"),
                         ({"model": {k: v[:1] for k, v in good["model"].items()}}, "its state does not fit"),
                         ({"step": "x"}, "its state does not fit")):
        torch.save({**good, **change}, path)
        with pytest.raises(TrainError, match=says):
            trainer.train(["--resume", "auto", "--out", str(out), "--no-progress"])


def test_a_full_disk_leaves_the_model_file_and_the_saved_state_agreeing(tmp_path, data, monkeypatch, capsys):
    """The disk fills while the model file is written: the run fails with the project's error, no
    half file is left, and resuming writes the model of exactly the step the saved state holds."""
    import errno

    from scg_models import formats

    out = tmp_path / "m.safetensors"

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(formats, "save_file", full_disk)
    assert _run(data, out, "--steps", "3") == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*partial"))
    saved = runtime.checkpoints(tmp_path / "m.train")
    assert [os.path.basename(p) for p in saved][-1] == "step_00000003.pt"
    monkeypatch.undo()
    assert trainer.main(["--resume", "auto", "--out", str(out), "--no-progress"]) == 0
    assert scg_models.load_autoencoder(out).config.info["steps"] == 3

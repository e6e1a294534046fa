"""The trainer end to end on the CPU, with tiny settings: learning, exact resumption, Ctrl-C,
checkpoint rotation, the output file and its provenance."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import scg_models
from scg_testing.trainers import ROOT, TINY_AE, child_env, skimage_or_skip
from train import autoencoder as trainer
from train import runtime
from train.runtime import TrainError


def _metrics(work_dir):
    """The training lines of metrics.jsonl (the start/end events left out)."""
    with open(os.path.join(work_dir, "metrics.jsonl")) as fh:
        return [r for r in map(json.loads, fh) if "loss" in r]


def test_fifty_cpu_steps_on_the_default_data_lower_the_loss(tmp_path):
    skimage_or_skip()
    out = tmp_path / "m.safetensors"
    assert trainer.main(TINY_AE + ["--steps", "50", "--out", str(out), "--sheet-every", "25"]) == 0
    rows = _metrics(tmp_path / "m.train")
    assert [r["step"] for r in rows] == list(range(1, 51))
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    for k in ("rec", "rec_trans", "equ_trans", "rec_rot", "equ_rot", "sym", "img_s", "lr"):
        assert k in rows[-1]
    # the output: our format, loadable as is, groups derived, provenance in the metadata
    ae = scg_models.load_autoencoder(out)
    assert (ae.n_vector, ae.vector_length, ae.kernel_size) == (16, 4, 21)
    assert "HC0" in ae.groups and "HC1" in ae.groups
    mods = [m for k in ("HC0", "HC1", "HC2", "HC3", "HC4", "HC5") if k in ae.groups and k != "HC2"
            for m in ae.groups[k]]
    assert sorted(set(mods) | set(ae.groups.get("HC2", []))) == list(range(16))  # HC0-HC5 cover every module
    info = ae.config.info
    assert info["command"].startswith("python -m train.autoencoder ") and "--steps 50" in info["command"]
    assert info["steps"] == 50 and "scikit-image" in info["data"]
    assert info["recipe"]["lambda_equ"] == 1.0
    with safe_open(str(out), "pt") as fh:
        assert fh.metadata()["format"] == "scg_autoencoder"
    sheets = sorted(os.listdir(tmp_path / "m.train" / "sheets"))
    assert sheets == ["modules_00000025.png", "modules_00000050.png"]


def _weights_and_state(out, work_dir):
    ck = runtime.checkpoints(str(work_dir))[-1]
    state = torch.load(ck, weights_only=True)
    return load_file(str(out)), state


def test_stop_and_resume_is_bit_identical(tmp_path):
    skimage_or_skip()
    args = TINY_AE + ["--steps", "8", "--lr", "0.01"]
    a = tmp_path / "a.safetensors"
    assert trainer.main(args + ["--out", str(a)]) == 0
    b = tmp_path / "b.safetensors"
    assert trainer.main(args + ["--out", str(b), "--stop-after", "3"]) == 130
    assert not b.exists()
    assert [os.path.basename(p) for p in runtime.checkpoints(str(tmp_path / "b.train"))] == ["step_00000003.pt"]
    # resume names nothing but the output: the recipe comes from the checkpoint
    assert trainer.main(["--resume", "auto", "--out", str(b), "--no-progress", "--threads", "1"]) == 0
    wa, sa = _weights_and_state(a, tmp_path / "a.train")
    wb, sb = _weights_and_state(b, tmp_path / "b.train")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert sa["step"] == sb["step"] == 8
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for k, v in sa["optimizer"]["state"].items():
        for kk in v:
            assert torch.equal(v[kk], sb["optimizer"]["state"][k][kk]), (k, kk)
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"]
    info = __import__("scg_models").load_autoencoder(b).config.info
    assert "--stop-after 3" in info["command"] and info["resumed_with"][0].endswith("--resume auto --out " + str(b)
                                                                                   + " --no-progress --threads 1")
    # the metrics file of the resumed run has each step once
    assert [r["step"] for r in _metrics(tmp_path / "b.train")] == list(range(1, 9))


def test_resume_refuses_a_different_recipe(tmp_path):
    skimage_or_skip()
    out = tmp_path / "m.safetensors"
    assert trainer.main(TINY_AE + ["--steps", "3", "--out", str(out), "--stop-after", "1"]) == 130
    with pytest.raises(TrainError, match="--lr 0.1 differs"):
        trainer.train(["--resume", "auto", "--out", str(out), "--lr", "0.1"])


def test_checkpoints_rotate_and_are_written_atomically(tmp_path):
    skimage_or_skip()
    out = tmp_path / "m.safetensors"
    assert trainer.main(TINY_AE + ["--steps", "7", "--out", str(out), "--ckpt-every", "1", "--keep", "2"]) == 0
    ck = [os.path.basename(p) for p in runtime.checkpoints(str(tmp_path / "m.train"))]
    assert ck == ["step_00000006.pt", "step_00000007.pt"]
    left = [f for f in os.listdir(tmp_path / "m.train" / "ckpts") if f.startswith(".tmp")]
    assert left == [] and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_user_groups_override_the_derived_ones(tmp_path):
    skimage_or_skip()
    g = tmp_path / "groups.json"
    g.write_text(json.dumps([{"name": "mine", "modules": [0, 3], "description": "picked by hand"}]))
    out = tmp_path / "m.safetensors"
    assert trainer.main(TINY_AE + ["--steps", "2", "--out", str(out), "--groups", str(g)]) == 0
    ae = scg_models.load_autoencoder(out)
    assert dict(ae.groups) == {"mine": [0, 3]}


def test_ctrl_c_writes_a_checkpoint(tmp_path):
    skimage_or_skip()
    out = tmp_path / "m.safetensors"
    cmd = [sys.executable, "-m", "train.autoencoder", *TINY_AE, "--steps", "100000", "--out", str(out)]
    p = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "m.train" / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and p.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    text, _ = p.communicate(timeout=60)
    assert p.returncode == 130, text
    ck = runtime.checkpoints(str(tmp_path / "m.train"))
    assert len(ck) == 1 and "resume with" in text
    state = torch.load(ck[0], weights_only=True)
    assert state["step"] >= 2
    assert not out.exists()


def test_bad_settings_are_clear_errors(tmp_path):
    out = str(tmp_path / "m.safetensors")
    with pytest.raises(TrainError, match="--crop 24: too small"):
        trainer.train(TINY_AE + ["--steps", "1", "--crop", "24", "--out", out])
    with pytest.raises(TrainError, match="--passes"):
        trainer.train(TINY_AE + ["--steps", "1", "--passes", "scale", "--out", out])
    with pytest.raises(TrainError, match="--out FILE.safetensors is required"):
        trainer.train(TINY_AE + ["--steps", "1"])

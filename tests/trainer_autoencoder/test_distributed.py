"""Two processes on the CPU (torchrun, gloo): the run works, only rank 0 writes, and the
result matches one process on the same global batch (DDP averages the two halves)."""
import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from scg_testing.trainers import PROBE_SCRIPT, TINY_AE, child_env, skimage_or_skip
from train import autoencoder as trainer


def test_two_gloo_processes_train_and_only_rank_0_writes(tmp_path):
    skimage_or_skip()
    probe = tmp_path / "probe"
    probe.mkdir()
    out = tmp_path / "ddp.safetensors"
    args = TINY_AE + ["--steps", "4", "--sheet-every", "2", "--ckpt-every", "2", "--device", "cpu"]
    env = child_env()
    env["SCG_PROBE_DIR"] = str(probe)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           PROBE_SCRIPT, *args, "--out", str(out)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rank0 = (probe / "rank0.txt").read_text().splitlines()
    rank1 = (probe / "rank1.txt").read_text().splitlines() if (probe / "rank1.txt").exists() else []
    assert rank1 == [], rank1
    kinds = {line.split()[0] for line in rank0}
    assert {"write", "model", "open"} <= kinds, rank0
    written = " ".join(rank0)
    assert "step_00000002.pt" in written and "modules_00000002.png" in written and "metrics.jsonl" in written
    assert out.exists()
    info = __import__("scg_models").load_autoencoder(out).config.info
    assert info["world_size"] == 2 and info["command"].startswith("torchrun --nproc_per_node 2 -m train.autoencoder")
    with open(tmp_path / "ddp.train" / "metrics.jsonl") as fh:
        rows = [r for r in map(json.loads, fh) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # one line per step, not one per rank

    # the same recipe in one process: the same data, so (nearly) the same weights
    single = tmp_path / "one.safetensors"
    assert trainer.main(args + ["--out", str(single)]) == 0
    with open(tmp_path / "one.train" / "metrics.jsonl") as fh:
        rows1 = [r for r in map(json.loads, fh) if "loss" in r]
    # step 1 sees the same weights and the same 4 crops: the same losses (the mean of the two halves)
    for k in ("rec", "rec_trans", "rec_rot", "equ_trans", "equ_rot", "sym", "loss"):
        assert abs(rows[0][k] - rows1[0][k]) <= 1e-5 * abs(rows1[0][k]) + 1e-8, (k, rows[0][k], rows1[0][k])
    # after 4 Adam steps: equal up to float rounding amplified by Adam's normalisation (lr 5e-3)
    a, b = load_file(str(out)), load_file(str(single))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-3), (k, (a[k] - b[k]).abs().max())

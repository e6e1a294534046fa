"""Two processes with torchrun over gloo: rank 0 writes, and 2 x batch 1 trains like 1 x batch 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from scg_testing.trainers import (
    CONTROLNET_SCRIPT,
    ROOT,
    assert_same_training,
    child_env,
    controlnet_args,
    run_controlnet,
)
from train import runtime

pytestmark = pytest.mark.host


def test_two_process_gloo_run_matches_one_process(files):
    root = files["root"] / "ddp"
    common = ("--steps", "3", "--lr", "1e-4", "--seed", "1", "--no-gradient-checkpointing", "--log-every", "1")
    argv = controlnet_args(files, root / "two.safetensors", *common)
    argv[argv.index("--batch-size") + 1] = "1"
    env = child_env()
    env["COMFYUI_PATH"] = str(files["comfyui"])
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           CONTROLNET_SCRIPT, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count("finished at step 3/3") == 1  # only rank 0 reports and writes
    log = [json.loads(x) for x in (root / "two.train" / "metrics.jsonl").read_text().splitlines()]
    assert [e.get("event") for e in log].count("start") == 1 and log[0]["world_size"] == 2
    assert sorted(p.name for p in root.iterdir()) == ["two.safetensors", "two.train"]
    assert [p.name for p in (root / "two.train" / "ckpts").iterdir()] == ["step_00000003.pt"]
    state = torch.load(root / "two.train" / "ckpts" / "step_00000003.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["recipe"]["world"] == 2

    one = run_controlnet(controlnet_args(files, root / "one" / "one.safetensors", *common))  # 1 process x batch 2
    assert one["done"]
    ref = torch.load(root / "one" / "one.train" / "ckpts" / "step_00000003.pt", weights_only=True)["controlnet"]
    other_args = [("2" if x == "1" and common[i - 1] == "--seed" else x) for i, x in enumerate(common)]
    run_controlnet(controlnet_args(files, root / "other" / "other.safetensors", *other_args))
    other = torch.load(root / "other" / "other.train" / "ckpts" / "step_00000003.pt", weights_only=True)
    assert_same_training(state["controlnet"], ref, other["controlnet"], steps=3, lr=1e-4)
    moved = sum(float((v - 0).abs().sum()) for k, v in ref.items() if k.startswith("zero_convs."))
    assert moved > 0


def test_sigterm_stops_after_the_step_and_saves(files):
    """A scheduler's SIGTERM (or Ctrl-C) ends the run cleanly at a step boundary, state saved."""
    import signal
    import time

    root = files["root"] / "sigterm"
    argv = controlnet_args(files, root / "s.safetensors", "--steps", "100000", "--log-every", "1",
                      "--no-gradient-checkpointing")
    env = child_env()
    env["COMFYUI_PATH"] = str(files["comfyui"])
    proc = subprocess.Popen([sys.executable, CONTROLNET_SCRIPT, *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = root / "s.train" / "metrics.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and sum('"loss"' in x for x in log.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]  # stopped early, checkpoint written
    assert "SIGTERM: stopping after this step" in err and "stopped at step" in err
    state = torch.load(runtime.checkpoints(root / "s.train")[-1], weights_only=True)
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines() if '"loss"' in x]
    assert state["step"] == steps[-1] >= 2

"""The benchmark scripts run end to end on the CPU (CI): bench/gpu_run.py's dry mode, the full-size
benchmark's child processes and its memory refusal, and the convolution FLOP count."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from scg_testing.hosts import find_host
from scg_testing.trainers import ROOT, child_env

HOST = find_host()
NO_HOST = "BENCH DRY RUN SKIPPED: no ComfyUI checkout ($COMFYUI_PATH, ~/comfy/ComfyUI); the ControlNet jobs need one"


def _run(*argv, timeout=300) -> subprocess.CompletedProcess:
    env = child_env(**({"COMFYUI_PATH": str(HOST)} if HOST else {}))
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(HOST is None, reason=NO_HOST)
def test_gpu_run_dry_mode_measures_every_job(tmp_path):
    out = tmp_path / "dry.json"
    done = _run(os.path.join("bench", "gpu_run.py"), "--dry", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["dry"] is True
    results = summary["results"]
    assert {"matmul bf16", "matmul fp32", "autoencoder 48 bf16", "autoencoder 48 fp32", "controlnet ours-bf16 b2",
            "controlnet authors b2", "controlnet ours b2", "sampling scg", "sampling core"} == set(results)
    for name, r in results.items():
        assert "error" not in r and "skipped" not in r, (name, r)
    assert all(t > 0 for t in results["controlnet authors b2"]["step_times_s"])
    assert results["controlnet ours-bf16 b2"]["precision"] == "bf16"
    assert results["autoencoder 48 fp32"]["conv_gflop_per_step"] > 0
    # the cached recipes keep fewer activations than the authors' (checkpointing)
    assert (results["controlnet ours b2"]["saved_for_backward_gib"]
            < results["controlnet authors b2"]["saved_for_backward_gib"])
    assert {"ours-bf16 vs authors: steps/s", "ours vs authors: steps/s", "sampling scg vs core: time"} <= set(
        summary["ratios"])
    assert summary["memory_model_prediction"]["batch"] == 4 and summary["memory_model_prediction"]["total_gib"] > 0


def test_gpu_run_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal is for machines without one")
    done = _run(os.path.join("bench", "gpu_run.py"), "--out", os.devnull, timeout=120)
    assert done.returncode == 2 and "no CUDA device here" in done.stderr and "--dry" in done.stderr


def test_fullsize_bench_runs_jobs_in_children_and_reports_their_peak(tmp_path):
    out = tmp_path / "fs.json"
    done = _run(os.path.join("bench", "fullsize_bench.py"), "--dry", "--only", "matmul,autoencoder", "--threads", "1",
                "--json", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["matmul fp32 256", "matmul bf16 256", "autoencoder 4x48 fp32"]
    for r in rows:
        assert "error" not in r and r["peak_rss_gib"] > 0.05, r  # a child's own peak (the interpreter and torch)
    assert "conv GFLOP/s / fp32 matmul peak" in done.stdout


def test_fullsize_bench_refuses_what_would_not_fit(tmp_path):
    out = tmp_path / "refused.json"
    done = _run(os.path.join("bench", "fullsize_bench.py"), "--only", "controlnet,sampling", "--max-gib", "2",
                "--json", str(out), timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 5 and all("refused" in r and "peak_rss_gib" not in r for r in rows), rows
    assert all(r["estimate_gib"] > 2 for r in rows)
    assert "REFUSED: needs about" in done.stdout and "cap 2 GiB" in done.stdout


def test_conv_flops_are_counted_from_the_shapes():
    from bench.fullsize_jobs import ConvFlops

    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    with ConvFlops() as count:
        conv(x).sum().backward()
    macs = 2 * 4 * 8 * 8 * 3 * 3 * 3  # N x C_out x H x W x C_in x k x k
    assert count.forward == 2 * macs
    assert count.backward == 2 * 2 * macs  # input and weight gradients
    grouped = torch.nn.Conv2d(4, 8, 5, stride=2, padding=2, groups=4, bias=False)
    with ConvFlops() as count:
        with torch.no_grad():
            grouped(torch.randn(1, 4, 16, 16))
    assert count.forward == 2 * (1 * 8 * 8 * 8 * 1 * 25) and count.backward == 0
    up = torch.nn.ConvTranspose2d(4, 2, 4, stride=2, bias=False)
    with ConvFlops() as count:
        with torch.no_grad():
            up(torch.randn(1, 4, 5, 5))
    assert count.forward == 2 * (1 * 4 * 25 * 2 * 16)  # every input pixel scatters a 2 x 4 x 4 kernel


@pytest.mark.skipif(HOST is None, reason=NO_HOST)
def test_subset_proof_runs_end_to_end_at_a_tiny_size(tmp_path):
    """bench/subset_proof.py with a few steps everywhere: the base is trained, the three ControlNets are
    trained in child processes, evaluated with train.evaluate, and their held-out losses measured."""
    out = tmp_path / "proof"
    done = _run(os.path.join("bench", "subset_proof.py"), "--out", str(out), "--train-images", "8", "--eval-images",
                "4", "--vae-steps", "3", "--base-steps", "3", "--steps", "3", "--sample-steps", "2", timeout=600)
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-3000:]  # 1: a claim does not hold
    report = json.loads((out / "proof.json").read_text())
    assert [(r["selection"], r["controlnet"]) for r in report["rows"]] == [
        ("none", "no control"), ("HC0", "per-group HC0"), ("HC0", "any-subset"), ("HC0", "any-subset, mask of HC1"),
        ("HC1", "per-group HC1"), ("HC1", "any-subset"), ("HC1", "any-subset, mask of HC0")]
    assert len(report["verdicts"]) == 9 and done.returncode == (0 if all(v["holds"] for v in report["verdicts"]) else 1)
    assert set(report["training"]) == {"HC0", "HC1", "any"}
    assert all(r["steps"] == 3 for r in report["training"].values())
    losses = report["denoising_losses"]
    assert len(losses) == 9 and all(0 < v < 10 for v in losses.values())
    # a wrong mask changes what the any-subset model predicts (its mask weights were trained)
    assert losses["any-subset random subsets"] != losses["any-subset random subsets, mask of another"]
    assert (out / "proof.md").read_text().count("- [") == 9
    for model in ("HC0", "HC1", "any"):
        assert (out / "models" / f"{model}.safetensors").is_file()

"""Training throughput of train.autoencoder: images/s of full optimiser steps (both transform
passes, every loss term, backward, AdamW), on random crops held in memory.

    python bench/train_bench.py                      # CPU: default crop and batch, and the shipped recipe
    python bench/train_bench.py --device cuda        # GPU: fp32 (TF32) and bf16 autocast, TFLOP/s vs peak

FLOPs are counted by ``torch.utils.flop_counter`` on one real step (convolutions and matmuls,
forward and backward), so TFLOP/s is what the step achieves, not an estimate. A benchmark,
never a test: numbers depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train/__init__.py; before torch loads

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train.autoencoder import Recipe, make_trainee
from train.data import Plan

RECIPE = Recipe()
from train.losses import affine_matrices  # noqa: E402

#: dense peak TFLOP/s (bf16 tensor cores, fp32 via TF32 tensor cores, plain fp32), by device-name fragment
PEAKS = {
    "H200": (989.0, 494.7, 66.9), "H100 SXM": (989.0, 494.7, 66.9), "H100 PCIe": (756.0, 378.0, 51.2),
    "H100": (989.0, 494.7, 66.9), "A100": (312.0, 156.0, 19.5), "L40S": (362.0, 183.0, 91.6),
    "A10G": (70.0, 35.0, 31.2), "RTX 4090": (165.2, 82.6, 82.6), "L4": (121.0, 60.0, 30.3),
}


def peak_for(name: str):
    for k, v in PEAKS.items():
        if k in name:
            return k, v
    return None, None


def make_inputs(batch: int, crop: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, crop, crop, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # a little spatial correlation
    plan = Plan(1, batch, seed, RECIPE.max_translate, RECIPE.max_rotate).step(0)
    tr = {}
    for name in ("trans", "rot"):
        ang = torch.tensor(plan.angle[name], dtype=torch.float32)
        A = affine_matrices(ang, torch.tensor(plan.shift[name], dtype=torch.float32) * crop / 2, crop)
        tr[name] = (A.to(device), torch.deg2rad(ang).to(device))
    return x.to(device), tr


def bench(device: str, batch: int, crop: int, precision: str, steps: int, warmup: int, compile_: bool = False):
    dev = torch.device(device)
    torch.manual_seed(0)
    t = make_trainee(RECIPE).to(dev)
    opt = torch.optim.AdamW(t.parameters(), lr=RECIPE.lr, weight_decay=RECIPE.weight_decay)
    fwd = torch.compile(t) if compile_ else t
    x, tr = make_inputs(batch, crop, dev)
    amp = precision == "bf16"

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = fwd(x, tr)
        opt.zero_grad(set_to_none=True)
        out["total"].backward()
        opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    return {"batch": batch, "crop": crop, "precision": precision, "s_per_step": dt, "img_s": batch / dt,
            "gflop_per_step": flops / 1e9, "tflops": flops / dt / 1e12}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/train_bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default: 3 on CPU, 30 on GPU)")
    p.add_argument("--config", action="append", default=None,
                   help="BATCHxCROP to time (repeatable); default: the recipe default "
                        f"{RECIPE.batch_size}x{RECIPE.crop} (and 8x96, the shipped model's, on CPU)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (GPU)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(torch.device(a.device))
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"
    configs = a.config or ([f"{RECIPE.batch_size}x{RECIPE.crop}"] + ([] if cuda else ["8x96"]))
    precisions = ["fp32", "bf16"] if cuda else ["fp32"]
    steps = a.steps or (30 if cuda else 3)
    print(f"train.autoencoder step benchmark on {a.device} ({name}), torch {torch.__version__}")
    key, peaks = peak_for(name) if cuda else (None, None)
    rows = []
    for c in configs:
        b, s = (int(v) for v in c.lower().split("x"))
        for prec in precisions:
            for comp in ([False, True] if (a.compile and cuda) else [False]):
                r = bench(a.device, b, s, prec, steps, warmup=3 if cuda else 1, compile_=comp)
                r["compile"] = comp
                if peaks:
                    pk = peaks[0] if prec == "bf16" else peaks[1]
                    r["peak"] = pk
                    r["pct_peak"] = 100 * r["tflops"] / pk
                rows.append(r)
                extra = f"  ({r['pct_peak']:.1f}% of {key}'s {r['peak']:.0f} TFLOP/s "\
                        f"{'bf16' if prec == 'bf16' else 'TF32'} peak)" if peaks else ""
                print(f"batch {b:>4} x crop {s:>3}  {prec:<4}{' compiled' if comp else ''}: "
                      f"{r['img_s']:8.1f} img/s  {r['s_per_step'] * 1000:8.1f} ms/step  "
                      f"{r['gflop_per_step']:8.1f} GFLOP/step  {r['tflops'] * 1000:8.1f} GFLOP/s{extra}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m scg_models bench``: hint extraction, ours vs the authors' way, side by side.

The naive path is what the authors run: the kernel recomposed from its factors at
every call, all channels encoded, masked, all channels decoded. Ours encodes and decodes
only the selected modules' channels with exact reformulations of the strided convolutions.
Timings are medians of interleaved runs, so both paths see the same machine load.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from .autoencoder import AutoencoderConfig, ModularAutoencoder


def naive_hint(ae: ModularAutoencoder, images: torch.Tensor, modules: list[int]) -> torch.Tensor:
    """The authors' ``HyperColumnLGN.forward`` (minus the resize): full encode, mask, full decode."""
    w = ae.gonlin.kernel()
    mask = torch.zeros(1, ae.n_vector, 1, 1, dtype=w.dtype, device=w.device)
    mask[:, modules] = 1
    mask = mask.repeat_interleave(ae.vector_length, 1)
    f = ae.activate(F.conv2d(ae.normalize(images), w, stride=ae.stride, padding=ae.padding)) * mask
    return F.conv_transpose2d(f, w, stride=ae.stride, padding=ae.padding)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(size: int = 512, batch: int = 1, repeats: int = 20, device: str = "cpu", dtype: str = "fp32",
        selections=("HC0", "HC3", "all"), seed: int = 0, model=None, out=print) -> list[dict]:
    """Time both paths per selection; print a table; return its rows."""
    dev = torch.device(device)
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    torch.manual_seed(seed)
    ae = model or ModularAutoencoder(AutoencoderConfig())
    if model is None:
        for p in ae.parameters():
            torch.nn.init.normal_(p, 0, 0.05)
    ae = ae.to(dev, dt).eval().requires_grad_(False)
    images = torch.rand(batch, 3, size, size, device=dev, dtype=dt)
    rows = []
    out(f"hint extraction, {batch}×3×{size}×{size}, {device} {dtype}, {torch.get_num_threads()} threads, "
        f"median of {repeats} interleaved runs ({ae.config.gonlin} {ae.n_vector}×{ae.vector_length})")
    out(f"{'selection':<10}{'modules':>8}{'naive ms/img':>14}{'ours ms/img':>13}{'speed-up':>10}{'max rel diff':>14}")
    with torch.inference_mode():
        for sel in selections:
            mods = ae.resolve_modules(sel)
            for _ in range(2):  # warm-up: first calls pick and cache the convolution kernels
                ref, got = naive_hint(ae, images, mods), ae.hint(images, mods)
            diff = ((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()
            t_naive, t_ours = [], []
            for _ in range(repeats):
                for fn, acc in ((lambda: naive_hint(ae, images, mods), t_naive), (lambda: ae.hint(images, mods), t_ours)):
                    _sync(dev)
                    t0 = time.perf_counter()
                    fn()
                    _sync(dev)
                    acc.append((time.perf_counter() - t0) * 1000 / batch)
            a, b = statistics.median(t_naive), statistics.median(t_ours)
            rows.append({"selection": sel, "modules": len(mods), "naive_ms": a, "ours_ms": b,
                         "speedup": a / b, "max_rel_diff": diff})
            out(f"{sel:<10}{len(mods):>8}{a:>14.2f}{b:>13.2f}{a / b:>9.1f}×{diff:>14.1e}")
    return rows

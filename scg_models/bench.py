"""``python -m scg_models bench``: hint extraction, ours vs the authors' way, side by side.

The naive path is what the authors run: the kernel recomposed from its factors at
every call, all channels encoded, masked, all channels decoded. Ours encodes and decodes
only the selected modules' channels with exact reformulations of the strided convolutions.

Both paths run with the same torch thread count (set here, printed), interleaved: each
repeat times one naive and one of our calls back to back (the order alternating between
repeats), so both see the same machine load. The speed-up is the median of the per-repeat
ratios, printed with their interquartile range, so a busy machine shows as a wide range
rather than as a wrong number.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from .autoencoder import AutoencoderConfig, ModularAutoencoder
from .dtypes import DTYPES


def naive_hint(ae: ModularAutoencoder, images: torch.Tensor, modules: list[int]) -> torch.Tensor:
    """The authors' ``HyperColumnLGN.forward`` (minus the resize): full encode, mask, full decode.

    images: B x 3 x H x W in [0, 1]; returns the raw hint B x 3 x H' x W' (unbounded).
    """
    w = ae.gonlin.kernel()
    mask = torch.zeros(1, ae.n_vector, 1, 1, dtype=w.dtype, device=w.device)
    mask[:, modules] = 1
    mask = mask.repeat_interleave(ae.vector_length, 1)
    f = ae.activate(F.conv2d(ae.normalize(images), w, stride=ae.stride, padding=ae.padding)) * mask
    return F.conv_transpose2d(f, w, stride=ae.stride, padding=ae.padding)


def _timed_ms(fn, device: torch.device) -> float:
    """Wall time of one call of ``fn`` in ms (the device synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    """(25th, 50th, 75th percentile); all three equal for a single value."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def run(size: int = 512, batch: int = 1, repeats: int = 20, device: str = "cpu", dtype: str = "fp32",
        threads: int = 1, selections=("HC0", "HC3", "all"), seed: int = 0, model=None, out=print) -> list[dict]:
    """Time both paths per selection with ``threads`` torch threads; print a table; return its rows.

    Each row: selection, modules, naive_ms and ours_ms (medians per image), speedup (median of the
    per-repeat ratios naive/ours), speedup_q1 and speedup_q3 (their quartiles), max_rel_diff.
    """
    dev = torch.device(device)
    dt = DTYPES[dtype]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    ae = model or ModularAutoencoder(AutoencoderConfig())
    if model is None:
        for p in ae.parameters():
            torch.nn.init.normal_(p, 0, 0.05)
    ae = ae.to(dev, dt).eval().requires_grad_(False)
    images = torch.rand(batch, 3, size, size, device=dev, dtype=dt)
    rows = []
    out(f"hint extraction, {batch}x3x{size}x{size}, {device} {dtype}, {torch.get_num_threads()} torch threads "
        f"for both paths, {repeats} interleaved repeats ({ae.config.gonlin} {ae.n_vector}x{ae.vector_length})")
    out(f"{'selection':<10}{'modules':>8}{'naive ms/img':>14}{'ours ms/img':>13}{'speed-up':>10}"
        f"{'IQR of ratios':>16}{'max rel diff':>14}")
    with torch.inference_mode():
        for sel in selections:
            mods = ae.resolve_modules(sel)

            def naive(mods=mods):
                return naive_hint(ae, images, mods)

            def ours(mods=mods):
                return ae.hint(images, mods)

            for _ in range(2):  # warm-up: first calls pick and cache the convolution kernels
                ref, got = naive(), ours()
            diff = ((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()
            t_naive, t_ours = [], []
            for i in range(repeats):
                if i % 2 == 0:
                    t_naive.append(_timed_ms(naive, dev))
                    t_ours.append(_timed_ms(ours, dev))
                else:
                    t_ours.append(_timed_ms(ours, dev))
                    t_naive.append(_timed_ms(naive, dev))
            q1, ratio, q3 = _quartiles([a / b for a, b in zip(t_naive, t_ours)])
            a, b = statistics.median(t_naive) / batch, statistics.median(t_ours) / batch
            rows.append({"selection": sel, "modules": len(mods), "naive_ms": a, "ours_ms": b, "speedup": ratio,
                         "speedup_q1": q1, "speedup_q3": q3, "max_rel_diff": diff, "threads": threads})
            spread = f"{q1:.1f}-{q3:.1f}x"
            out(f"{sel:<10}{len(mods):>8}{a:>14.2f}{b:>13.2f}{ratio:>9.1f}x{spread:>16}{diff:>14.1e}")
    return rows

"""PNG sheets, drawn with Pillow only: the learned kernels (one row per module) next to each
module's reconstruction of a sample image -- the paper's figure of modules -- and simple
line plots for the tuning curves of ``train.analyze``."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from scg_models import ModularAutoencoder
from scg_models.analysis import rgb_kernels

BG = (24, 24, 24)
FG = (230, 230, 230)


def _signed_rgb(a: np.ndarray, m: float | None = None) -> np.ndarray:
    """CxHxW signed values -> HxWx3 uint8, 0 |-> grey, scaled by ``m`` (default: the largest |value|;
    one scale for all channels keeps the hue)."""
    m = m or float(np.abs(a).max()) or 1.0
    return (np.clip(0.5 + 0.5 * a / m, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def _paste(sheet: Image.Image, arr: np.ndarray, xy, scale: int = 1) -> None:
    im = Image.fromarray(arr)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    sheet.paste(im, xy)


@torch.no_grad()
def module_sheet(ae: ModularAutoencoder, sample: torch.Tensor, scale: int = 4) -> Image.Image:
    """One row per module: its vl kernels (RGB, shared scale per module) and its reconstruction
    of ``sample`` (3xHxW in [0, 1]); the first row holds the sample and the full reconstruction."""
    k = rgb_kernels(ae).numpy()
    nv, vl, K = ae.n_vector, ae.vector_length, ae.kernel_size
    p = next(ae.parameters())
    x = ae.normalize(sample[None].to(p))
    f = ae.encode(x, normalize=False)
    per = ae.decode_per_module(f)[0].float().cpu().numpy()          # nvx3xhxw (normalised space)
    full = (ae.decode(f)[0].float().cpu() * ae.std.cpu()[0] + ae.mean.cpu()[0]).clamp(0, 1).numpy()
    h, w = per.shape[-2:]
    cell = max(K * scale, h)
    pad = 4
    W = pad + vl * (K * scale + pad) + pad + w + pad
    H = pad + (nv + 1) * (cell + pad)
    sheet = Image.new("RGB", (W, H), BG)
    draw = ImageDraw.Draw(sheet)
    img = (sample.float().cpu().numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    _paste(sheet, img[:h, :w], (pad, pad))
    _paste(sheet, (full.transpose(1, 2, 0)[:h, :w] * 255).round().astype(np.uint8), (pad + w + pad, pad))
    draw.text((pad + 2 * (w + pad), pad), "input | full reconstruction", fill=FG)
    for i in range(nv):
        y = pad + (i + 1) * (cell + pad)
        mk = k[i * vl:(i + 1) * vl]
        m = float(np.abs(mk).max()) or 1.0
        for c in range(vl):
            _paste(sheet, _signed_rgb(mk[c], m), (pad + c * (K * scale + pad), y), scale)
        _paste(sheet, _signed_rgb(per[i]), (pad + vl * (K * scale + pad) + pad, y))
        draw.text((pad + 1, y + 1), str(i), fill=(255, 255, 0))
    return sheet


def save_png(img: Image.Image, path: str) -> None:
    """Atomic PNG write."""
    from .runtime import atomic_write

    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def line_plot(curves: list[tuple[str, np.ndarray, np.ndarray, tuple]], title: str, xlabel: str,
              size=(360, 220), log_x: bool = False) -> Image.Image:
    """A minimal line plot: curves = [(label, x, y, colour)], y scaled to the max over curves."""
    W, H = size
    L, R, T, B = 34, 8, 18, 26
    im = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.text((L, 3), title, fill=(0, 0, 0))
    xs = np.concatenate([c[1] for c in curves])
    xs = np.log(xs) if log_x else xs
    x0, x1 = float(xs.min()), float(xs.max()) or 1.0
    ymax = max(float(np.max(c[2])) for c in curves) or 1.0
    d.rectangle([L, T, W - R, H - B], outline=(0, 0, 0))
    for _label, x, y, col in curves:
        xx = np.log(x) if log_x else x
        px = L + (xx - x0) / max(x1 - x0, 1e-9) * (W - L - R)
        py = H - B - np.asarray(y) / ymax * (H - T - B)
        d.line(list(zip(px.tolist(), py.tolist())), fill=col, width=2)
    d.text((L, H - B + 4), f"{xlabel}: {np.exp(x0) if log_x else x0:.3g} ... {np.exp(x1) if log_x else x1:.3g}",
           fill=(0, 0, 0))
    d.text((2, T), f"{ymax:.2g}", fill=(0, 0, 0))
    return im


def grid(images: list[Image.Image], cols: int, pad: int = 4, bg=(255, 255, 255)) -> Image.Image:
    w = max(i.width for i in images)
    h = max(i.height for i in images)
    rows = -(-len(images) // cols)
    out = Image.new("RGB", (pad + cols * (w + pad), pad + rows * (h + pad)), bg)
    for k, im in enumerate(images):
        out.paste(im, (pad + (k % cols) * (w + pad), pad + (k // cols) * (h + pad)))
    return out

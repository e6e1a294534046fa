"""Image plumbing around the hint: channel fixes and resizing to the generation size.

Everything here works on B×C×H×W float tensors in [0, 1] on any device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import SCGError


def to_rgb(images: torch.Tensor, name: str = "images") -> tuple[torch.Tensor, str | None]:
    """B×C×H×W with C in {1, 3, 4} → B×3×H×W, and a note saying what was changed (or None).

    Grey (C=1) is repeated to RGB; the alpha of RGBA (C=4) is dropped, not composited.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise SCGError(f"{name}: expected B×C×H×W, got {shape}")
    c = images.shape[1]
    if c == 3:
        return images, None
    if c == 1:
        return images.expand(-1, 3, -1, -1), f"{name}: grey image (1 channel) repeated to RGB"
    if c == 4:
        return images[:, :3], f"{name}: RGBA image, alpha channel dropped"
    raise SCGError(f"{name}: expected 1, 3 or 4 channels (grey, RGB, RGBA), got {c}")


def center_crop_box(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the centred crop of an H×W image with the aspect ratio of the target.

    The same rounding as ComfyUI's ``common_upscale(..., crop="center")``, so a hint
    made here covers the same part of the image as a core ControlNet's hint.
    """
    old, new = width / height, target_w / target_h
    x = y = 0
    if old > new:
        x = round((width - width * (new / old)) / 2)
    elif old < new:
        y = round((height - height * (old / new)) / 2)
    return y, x, height - 2 * y, width - 2 * x


def fit(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop B×C×H×W to the aspect ratio of height×width, then resize to exactly that.

    Bilinear with antialiasing (no ringing, no aliasing when shrinking; values stay in
    the input's range up to rounding). Returns the input itself when it already has that size.
    """
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    if height < 1 or width < 1:
        raise SCGError(f"fit: target size must be positive, got {height}×{width}")
    top, left, ch, cw = center_crop_box(h, w, height, width)
    x = images[..., top:top + ch, left:left + cw]
    if (ch, cw) == (height, width):
        return x
    dtype = x.dtype
    if x.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # antialiased interpolation has no half-precision CPU kernel
    out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.to(dtype)


__all__ = ["center_crop_box", "fit", "to_rgb"]

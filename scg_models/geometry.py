"""Where the SCG hint sits: its size, the canvas a ControlNet host expects, and how it travels as an image.

For a generation of H x W pixels (latent x 8) the SCG ControlNet wants exactly the hint of the image
fitted to H x W, which is smaller: h x w = :meth:`HintGeometry.hint_size` (509 x 509 for 512 x 512 with
the released autoencoder, a stride-4 transposed convolution with a 21 x 21 kernel). ComfyUI's
ControlNets (core's and Advanced-ControlNet's) resize any hint whose size differs from H x W. So the
hint travels on a *canvas*, B x 3 x H x W, the hint in its top-left h x w corner; a host passes a
canvas of the generation size through unchanged, and the SCG ControlNet's input stage
(``nodes.scg_controlnet.HintAdapter``) crops the corner back. Two kinds:

* raw (inside Apply SCG ControlNet): the hint itself, zeros around it; bit-exact.
* encoded (HypercolumnExtract's ``hint`` output, an IMAGE any node may touch): values in [0, 1],
  ``0.5 + hint / 64`` (0.5 is a zero hint), for hints within +-32. Nodes that clamp to [0, 1] change
  nothing; 8-bit storage costs at most 64 / 510 ~ 0.13 in hint units. Decoding is exact up to the
  float32 rounding of the encoding, at most 64 * 2**-24 ~ 4e-6 in hint units.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .errors import SCGError

#: hint units per canvas unit: the canvas holds 0.5 + hint / ENCODE_SCALE (a power of two: exact scaling)
ENCODE_SCALE = 64.0
#: the largest |hint| a canvas can hold
HINT_LIMIT = ENCODE_SCALE / 2


@dataclasses.dataclass(frozen=True)
class HintGeometry:
    """The autoencoder's kernel size, stride and padding: all the hint geometry depends on."""

    kernel: int
    stride: int
    padding: int

    @classmethod
    def of(cls, ae) -> HintGeometry:
        """The geometry of a :class:`~scg_models.ModularAutoencoder`."""
        return cls(int(ae.kernel_size), int(ae.stride), int(ae.padding))

    def hint_size(self, height: int, width: int) -> tuple[int, int]:
        """Hint size h x w for an H x W input (509 x 509 for 512 x 512 with the released model)."""
        s, k, p = self.stride, self.kernel, self.padding
        return tuple(((n + 2 * p - k) // s) * s + k - 2 * p for n in (height, width))

    def to_canvas(self, hint: torch.Tensor, height: int, width: int, encode: bool) -> torch.Tensor:
        """B x 3 x h x w hint -> B x 3 x H x W canvas, raw (same dtype) or encoded (float32, in [0, 1]).

        Raises :class:`SCGError` when the hint is not finite or beyond +-:data:`HINT_LIMIT` (garbage: the
        SCG hint of an image in [0, 1] stays within a few units at sane gains).
        """
        lo, hi = (float(v) for v in torch.aminmax(hint.float())) if hint.numel() else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise SCGError("hint: the autoencoder produced NaN or infinite values (are the gains finite and sane?)")
        if lo < -HINT_LIMIT or hi > HINT_LIMIT:
            raise SCGError(f"hint: values reach [{lo:.3g}, {hi:.3g}], beyond the +-{HINT_LIMIT:g} a hint can carry; "
                           "use smaller gains")
        h, w = hint.shape[-2:]
        if not encode:
            return F.pad(hint, (0, width - w, 0, height - h))
        canvas = hint.new_full((*hint.shape[:-2], height, width), 0.5, dtype=torch.float32)
        canvas[..., :h, :w] = hint.float() * (1.0 / ENCODE_SCALE) + 0.5
        return canvas

    def from_canvas(self, canvas: torch.Tensor, encoded: bool) -> torch.Tensor:
        """B x C x H x W canvas -> the B x C x h x w hint it carries (cropped, decoded if encoded)."""
        h, w = self.hint_size(*canvas.shape[-2:])
        hint = canvas[..., :h, :w]
        return (hint - 0.5) * ENCODE_SCALE if encoded else hint


def generation_size(height: int, width: int, resolution: int, multiple: int = 8) -> tuple[int, int]:
    """The H x W an image is fitted to for a ``resolution`` (its short side), as preprocessors do.

    The short side becomes ``resolution``, the long side keeps the aspect ratio; both are rounded to
    ``multiple`` (8: a latent size), so a generation of that size takes the canvas as it is.
    """
    short, long = sorted((height, width))
    scaled = (max(multiple, round(resolution / multiple) * multiple),
              max(multiple, round(long * resolution / short / multiple) * multiple))
    return scaled if height <= width else scaled[::-1]


__all__ = ["ENCODE_SCALE", "HINT_LIMIT", "HintGeometry", "generation_size"]

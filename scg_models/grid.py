"""A contact sheet of an autoencoder's groups: every group's preview side by side, labelled.

The labels are drawn with a built-in 5x7 bitmap font, so no font file or imaging
library is needed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .autoencoder import ModularAutoencoder
from .errors import SCGError
from .imaging import fit

# 5x7 glyphs, rows top to bottom, '#' = ink. Lower case is drawn as upper case;
# characters without a glyph are drawn as '?'.
_FONT_ROWS = {
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    "A": "01110 10001 10001 11111 10001 10001 10001", "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110", "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111", "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111", "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110", "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001", "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001", "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101", "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110", "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110", "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010", "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 10001 01010 00100 00100 00100", "Z": "11111 00001 00010 00100 01000 10000 11111",
    " ": "00000 00000 00000 00000 00000 00000 00000", "+": "00000 00100 00100 11111 00100 00100 00000",
    "-": "00000 00000 00000 11111 00000 00000 00000", "_": "00000 00000 00000 00000 00000 00000 11111",
    ",": "00000 00000 00000 00000 01100 00100 01000", ".": "00000 00000 00000 00000 00000 01100 01100",
    ":": "00000 01100 01100 00000 01100 01100 00000", "(": "00010 00100 01000 01000 01000 00100 00010",
    ")": "01000 00100 00010 00010 00010 00100 01000", "/": "00000 00001 00010 00100 01000 10000 00000",
    "=": "00000 00000 11111 00000 11111 00000 00000", "?": "01110 10001 00001 00010 00100 00000 00100",
}
_GLYPHS: dict[str, torch.Tensor] = {}


def _glyph(ch: str) -> torch.Tensor:
    ch = ch.upper() if ch.upper() in _FONT_ROWS else "?"
    if ch not in _GLYPHS:
        _GLYPHS[ch] = torch.tensor([[float(b) for b in row] for row in _FONT_ROWS[ch].split()])
    return _GLYPHS[ch]


def text_mask(text: str, scale: int = 1) -> torch.Tensor:
    """Ink mask (7*scale)x(6*len*scale) of ``text`` in the 5x7 font (1 = ink), on the CPU."""
    if not text:
        return torch.zeros(7 * scale, 0)
    cols = []
    for ch in text:
        cols += [_glyph(ch), torch.zeros(7, 1)]
    m = torch.cat(cols[:-1], dim=1)
    return m.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def draw_label(tile: torch.Tensor, text: str, scale: int | None = None) -> torch.Tensor:
    """``tile`` (Bx3xHxW in [0, 1]) with ``text`` in white on a dark band at its top-left (a copy)."""
    h, w = tile.shape[-2:]
    scale = scale or max(1, round(min(h, w) / 170))
    mask = text_mask(text, scale)
    pad = scale * 2
    mh, mw = min(mask.shape[0], h - 2 * pad), min(mask.shape[1], w - 2 * pad)
    out = tile.clone()
    if mh <= 0 or mw <= 0:
        return out
    band = out[..., : mh + 2 * pad, : mw + 2 * pad]
    band.mul_(0.35)  # darken behind the text so it reads on any preview
    m = mask[:mh, :mw].to(out)
    region = out[..., pad:pad + mh, pad:pad + mw]
    region.copy_(region * (1 - m) + m)
    return out


def grid_shape(n: int, max_columns: int = 5) -> tuple[int, int]:
    """(rows, columns) for n tiles: at most ``max_columns`` wide, rows as even as possible."""
    if n < 1:
        raise SCGError("grid: nothing to show (no groups)")
    rows = math.ceil(n / max_columns)
    return rows, math.ceil(n / rows)


@torch.no_grad()
def group_grid(ae: ModularAutoencoder, images: torch.Tensor, groups: Sequence[str] | None = None,
               labels: bool = True, include_input: bool = True, max_tile: int | None = 512,
               gap: int = 4, max_columns: int = 5) -> torch.Tensor:
    """Every group's preview (:meth:`ModularAutoencoder.preview`) side by side, one sheet per image.

    images: Bx3xHxW in [0, 1], trusted as in :meth:`ModularAutoencoder.hint` (checked where they enter).
    groups: names from ``ae.groups`` (default: all, in order).
    ``include_input`` puts the input image first; ``labels`` writes each tile's name;
    tiles are the hint size, shrunk so their long side is at most ``max_tile``.
    Returns Bx3x(rows*(h+gap)-gap)x(cols*(w+gap)-gap) in [0, 1], float32, on the
    images' device; the gaps are dark grey.
    """
    names = list(ae.groups) if groups is None else list(groups)
    unknown = [g for g in names if g not in ae.groups]
    if unknown:
        raise SCGError(f"groups: unknown group {unknown[0]!r}; this autoencoder's groups are {', '.join(ae.groups)}")
    h, w = ae.output_size(*images.shape[-2:])
    if max_tile and max(h, w) > max_tile:
        s = max_tile / max(h, w)
        h, w = max(1, round(h * s)), max(1, round(w * s))
    tiles: list[tuple[str, torch.Tensor]] = []
    if include_input:
        tiles.append(("input", fit(images.float(), h, w)))
    for name in names:
        tiles.append((name, fit(ae.preview(images, ae.groups[name]).float(), h, w)))
    rows, cols = grid_shape(len(tiles), max_columns)
    b = images.shape[0]
    sheet = torch.full((b, 3, rows * (h + gap) - gap, cols * (w + gap) - gap), 0.15,
                       dtype=torch.float32, device=images.device)
    for i, (name, tile) in enumerate(tiles):
        r, c = divmod(i, cols)
        tile = draw_label(tile, name) if labels else tile
        sheet[..., r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile.to(sheet.device)
    return sheet.clamp_(0, 1)  # resampling can overshoot 1 by a rounding error


__all__ = ["draw_label", "grid_shape", "group_grid", "text_mask"]

"""Exact reformulations of strided (transposed) convolutions that run fast on small channel counts.

PyTorch's CPU kernels for transposed and depthwise convolutions with few channels are
slow. A transposed convolution of stride ``s`` equals a stride-1 convolution that
writes the ``s*s`` output phases as channels, followed by ``pixel_shuffle``; a
strided convolution equals a stride-1 convolution on ``pixel_unshuffle``-d input.
Both are the same sums in another order (differences are float rounding only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def conv_transpose2d_full(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, stride=stride, groups=groups)`` with padding 0.

    x: B x Cin x h x w; weight: Cin x (Cout/groups) x K x K (the transposed-conv layout).
    Returns B x Cout x ((h-1)*s+K) x ((w-1)*s+K).
    """
    cin, cog, k, k2 = weight.shape
    if k != k2:
        raise ValueError(f"square kernels only; got {tuple(weight.shape)}")
    s = stride
    kd = -(-k // s)
    w = F.pad(weight, (0, kd * s - k, 0, kd * s - k))
    # phase (ri, rj) of tap (a, b) is w[..., a*s+ri, b*s+rj]; out channel order (co, ri, rj)
    w = w.reshape(cin, cog, kd, s, kd, s).permute(0, 1, 3, 5, 2, 4).reshape(cin, cog * s * s, kd, kd)
    w = w.reshape(groups, cin // groups, cog * s * s, kd, kd).transpose(1, 2)
    w = w.reshape(groups * cog * s * s, cin // groups, kd, kd).flip(-1, -2)
    y = F.conv2d(F.pad(x, (kd - 1,) * 4), w, groups=groups)
    if s > 1:
        y = F.pixel_shuffle(y, s)
    h, wd = x.shape[-2:]
    return y[..., : (h - 1) * s + k, : (wd - 1) * s + k]


def conv2d_polyphase(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding)`` computed on ``pixel_unshuffle``-d input.

    x: B x C x H x W; weight: O x C x K x K. Returns B x O x h x w, h = floor((H+2p-K)/s)+1.
    """
    s = stride
    o, c, k, _ = weight.shape
    if s == 1:
        return F.conv2d(x, weight, padding=padding)
    kd = -(-k // s)
    H, W = x.shape[-2:]
    ho, wo = (H + 2 * padding - k) // s + 1, (W + 2 * padding - k) // s + 1
    x = F.pad(x, (padding, s * (wo + kd - 1) - W - padding, padding, s * (ho + kd - 1) - H - padding))
    w = F.pad(weight, (0, kd * s - k, 0, kd * s - k))
    w = w.reshape(o, c, kd, s, kd, s).permute(0, 1, 3, 5, 2, 4).reshape(o, c * s * s, kd, kd)
    return F.conv2d(F.pixel_unshuffle(x, s), w)

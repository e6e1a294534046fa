"""Factorised kernel nets ("gonlins") that compose the autoencoder's single kernel.

Each gonlin holds small trainable convolutions (state-dict names as in the authors'
``V1_sep.py``) and composes them into one kernel ``W`` of shape
``(n_vector*vector_length)x3xKxK`` exactly as the authors' ``get_weight`` does. The
Bipolar family can also run its cascade directly on the selected modules
(:meth:`Gonlin.cascade_encode` / :meth:`Gonlin.cascade_decode`): the same linear map
as the composite kernel at stride 4, for a fraction of the work.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import conv_transpose2d_full


class Gonlin(nn.Module):
    """Base: ``kernel()`` -> composite kernel Cx3xKxK, C = n_vector*vector_length."""

    #: stride at which the factor cascade equals the composite kernel; None: no cascade.
    cascade_stride: int | None = None

    def __init__(self, n_vector: int, vector_length: int, in_channels: int = 3):
        super().__init__()
        self.n_vector, self.vector_length, self.in_channels = n_vector, vector_length, in_channels
        self.n_channels = n_vector * vector_length

    def _eye(self, like: torch.Tensor) -> torch.Tensor:
        return torch.eye(self.n_channels, dtype=like.dtype, device=like.device)[:, :, None, None]

    def kernel(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def kernel_size(self) -> int:
        with torch.no_grad():
            return int(self.kernel().shape[-1])


class _BipolarFamily(Gonlin):
    """Two stride-2 RGB paths (direct, and followed by a depthwise conv) summed, then a
    grouped stride-2 conv to the modules' channels. Effective stride 4."""

    cascade_stride = 4
    k1 = 5  # first-stage and depthwise kernel size

    @property
    def kernel_size(self) -> int:
        return (5 + 2 * self._q - 1) * 2 + self.k1

    @property
    def _q(self) -> int:  # pad between the stages in get_weight; direct-path offset in stage-1 cells
        return (self.k1 - 1) // 2

    def stage1(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Effective RGB weights (direct path, depthwise path), each n_vectorx3xk1xk1."""
        return self.c1_1.weight, self.c1_2_1.weight

    def kernel(self) -> torch.Tensor:
        w_a, w_b = self.stage1()
        q = self._q
        out = F.conv_transpose2d(self._eye(w_a), self.c2.weight, stride=2, groups=self.n_vector)
        out = F.pad(out, (q, q, q, q))
        out1 = F.conv_transpose2d(out, w_a, stride=2)
        out2 = F.conv_transpose2d(out, self.c1_2_2.weight, padding=q, groups=self.n_vector)
        return out1 + F.conv_transpose2d(out2, w_b, stride=2)

    def _select(self, modules: list[int]):
        w_a, w_b = self.stage1()
        idx = torch.as_tensor(modules, device=w_a.device)
        ch = (idx[:, None] * self.vector_length + torch.arange(self.vector_length, device=w_a.device)).flatten()
        return torch.cat([w_b[idx], w_a[idx]]), self.c1_2_2.weight[idx], self.c2.weight[ch]

    def cascade_encode(self, x_padded: torch.Tensor, modules: list[int]) -> torch.Tensor:
        """Features of ``modules`` for input already padded by the composite padding.

        x_padded: Bx3xLxM. Returns Bx(vector_length*len(modules))xhxw, the same as
        ``conv2d(x_padded, kernel()[channels], stride=4)``.
        """
        n, q = len(modules), self._q
        w1, w_dw, w_c2 = self._select(modules)
        hh = F.conv2d(x_padded, w1, stride=2)
        s = F.conv2d(hh[:, :n], w_dw, groups=n)
        s = s + hh[:, n:, q:q + s.shape[-2], q:q + s.shape[-1]]
        return F.conv2d(s, w_c2, stride=2, groups=n)

    def cascade_decode(self, f: torch.Tensor, modules: list[int]) -> torch.Tensor:
        """Adjoint of :meth:`cascade_encode`: the full (uncropped) transposed convolution.

        f: Bx(vector_length*len(modules))xhxw. Returns Bx3x((h-1)*4+K)x((w-1)*4+K).
        """
        n, q = len(modules), self._q
        w1, w_dw, w_c2 = self._select(modules)
        st = conv_transpose2d_full(f, w_c2, stride=2, groups=n)
        hb = conv_transpose2d_full(st, w_dw, groups=n)
        return conv_transpose2d_full(torch.cat([hb, F.pad(st, (q, q, q, q))], 1), w1, stride=2)


class Bipolar(_BipolarFamily):
    """The released factorisation: composite 21x21 (4 400 parameters at 16x4)."""

    def __init__(self, n_vector: int, vector_length: int, in_channels: int = 3):
        super().__init__(n_vector, vector_length, in_channels)
        nv = n_vector
        self.c1_1 = nn.Conv2d(in_channels, nv, 5, 2, 2, bias=False)
        self.c1_2_1 = nn.Conv2d(in_channels, nv, 5, 2, 2, bias=False)
        self.c1_2_2 = nn.Conv2d(nv, nv, 5, 1, 2, bias=False, groups=nv)
        self.c2 = nn.Conv2d(nv, self.n_channels, 5, 2, 2, bias=False, groups=nv)


class Bipolar_ks3(_BipolarFamily):
    """Bipolar with 3x3 first-stage kernels: composite 15x15."""

    k1 = 3

    def __init__(self, n_vector: int, vector_length: int, in_channels: int = 3):
        super().__init__(n_vector, vector_length, in_channels)
        nv = n_vector
        self.c1_1 = nn.Conv2d(in_channels, nv, 3, 2, 2, bias=False)
        self.c1_2_1 = nn.Conv2d(in_channels, nv, 3, 2, 2, bias=False)
        self.c1_2_2 = nn.Conv2d(nv, nv, 3, 1, 2, bias=False, groups=nv)
        self.c2 = nn.Conv2d(nv, self.n_channels, 5, 2, 2, bias=False, groups=nv)


class Bipolar_1x1(_BipolarFamily):
    """Bipolar with 1x1 colour mixing per path, then per-module spatial kernels: 21x21."""

    def __init__(self, n_vector: int, vector_length: int, in_channels: int = 3):
        super().__init__(n_vector, vector_length, in_channels)
        nv = n_vector
        self.c0_1 = nn.Conv2d(in_channels, nv, 1, 1, 0, bias=False)
        self.c0_2 = nn.Conv2d(in_channels, nv, 1, 1, 0, bias=False)
        self.c1_1 = nn.Conv2d(nv, nv, 5, 2, 2, bias=False, groups=nv)
        self.c1_2_1 = nn.Conv2d(nv, nv, 5, 2, 2, bias=False, groups=nv)
        self.c1_2_2 = nn.Conv2d(nv, nv, 5, 1, 2, bias=False, groups=nv)
        self.c2 = nn.Conv2d(nv, self.n_channels, 5, 2, 2, bias=False, groups=nv)

    def stage1(self):
        # a 1x1 mix then a per-module kxk conv is one kxk RGB conv with the outer-product weight
        return self.c1_1.weight * self.c0_1.weight, self.c1_2_1.weight * self.c0_2.weight


class Vanilla(Gonlin):
    """One plain convolution: the composite kernel is its weight (KxK from the config)."""

    def __init__(self, n_vector: int, vector_length: int, in_channels: int = 3, kernel_size: int = 21):
        super().__init__(n_vector, vector_length, in_channels)
        self.c1 = nn.Conv2d(in_channels, self.n_channels, kernel_size, 1, kernel_size // 2, bias=False)

    @property
    def kernel_size(self) -> int:
        return self.c1.weight.shape[-1]

    def kernel(self):
        return self.c1.weight


class Vanilla_2layer(Gonlin):
    """5x5 stride-2 RGB conv to one map per module, then a grouped 5x5 stride-2 conv: 13x13."""

    groups_c2 = True

    def __init__(self, n_vector: int, vector_length: int, in_channels: int = 3):
        super().__init__(n_vector, vector_length, in_channels)
        nv = n_vector
        self.c1 = nn.Conv2d(in_channels, nv, 5, 2, 2, bias=False)
        self.c2 = nn.Conv2d(nv, self.n_channels, 5, 2, 2, bias=False, groups=nv if self.groups_c2 else 1)

    @property
    def kernel_size(self) -> int:
        return 13

    def kernel(self):
        out = F.conv_transpose2d(self._eye(self.c2.weight), self.c2.weight, stride=2, groups=self.c2.groups)
        return F.conv_transpose2d(out, self.c1.weight, stride=2)


class Vanilla_2layer_nogroup(Vanilla_2layer):
    """As Vanilla_2layer, but the second conv mixes all modules' maps."""

    groups_c2 = False


GONLINS: dict[str, type[Gonlin]] = {c.__name__: c for c in
                                     (Bipolar, Bipolar_ks3, Bipolar_1x1, Vanilla, Vanilla_2layer, Vanilla_2layer_nogroup)}

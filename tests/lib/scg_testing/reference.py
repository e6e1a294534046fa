"""An independent reference for the hint, written for the tests.

The composite kernel is measured, not composed: unit impulses are pushed through the
factor cascade run as plain strided convolutions (the authors' "retina -> bipolar -> LGN"
reading of the factors), and the responses are read back into a kernel. The hint is then
an explicit ``conv2d`` -> mask -> ``conv_transpose2d`` with that kernel.
"""
import copy

import torch
import torch.nn.functional as F


def cascade(g, x):
    """Features of the factor cascade with 'same' paddings, all channels (total stride 4).

    x: B x 3 x H x W (float64); returns B x C x H/4 x W/4, straight from the factors' weights.
    """
    name = type(g).__name__
    if name in ("Bipolar", "Bipolar_ks3", "Bipolar_1x1"):
        k = g.c1_2_2.weight.shape[-1]
        q = (k - 1) // 2
        nv = g.n_vector
        if name == "Bipolar_1x1":
            a = F.conv2d(F.conv2d(x, g.c0_1.weight), g.c1_1.weight, stride=2, padding=q, groups=nv)
            b = F.conv2d(F.conv2d(x, g.c0_2.weight), g.c1_2_1.weight, stride=2, padding=q, groups=nv)
        else:
            a = F.conv2d(x, g.c1_1.weight, stride=2, padding=q)
            b = F.conv2d(x, g.c1_2_1.weight, stride=2, padding=q)
        b = F.conv2d(b, g.c1_2_2.weight, padding=q, groups=nv)
        return F.conv2d(a + b, g.c2.weight, stride=2, padding=2, groups=nv)
    if name.startswith("Vanilla_2layer"):
        h = F.conv2d(x, g.c1.weight, stride=2, padding=2)
        return F.conv2d(h, g.c2.weight, stride=2, padding=2, groups=g.c2.groups)
    raise NotImplementedError(name)


def measured_kernel(g, kernel_size: int, stride: int = 4) -> torch.Tensor:
    """Composite kernel C x 3 x K x K (float64) read from the cascade's impulse responses.

    An impulse at input position y feeds output p through tap k = y - stride*p + P, with
    P = (K-1)/2. One impulse per input channel and phase (ry, rx) in [0, stride)^2, all
    ``3 * stride**2`` of them run as one batch; tap k is read from the phase r = (k - P) mod stride
    at output p = (y0 + r + P - k) / stride.
    """
    g = copy.deepcopy(g).double()
    K, s = kernel_size, stride
    P = (K - 1) // 2
    n = 3 * K
    y0 = (n // 2) // s * s
    # The cascade reaches at most K pixels from an impulse; this far from every border, zero padding
    # anywhere in it reads the same zeros an infinite canvas would.
    assert y0 >= K and n - (y0 + s) >= K, (n, y0, K, s)
    c, ry, rx = torch.meshgrid(torch.arange(3), torch.arange(s), torch.arange(s), indexing="ij")
    c, ry, rx = c.flatten(), ry.flatten(), rx.flatten()
    x = torch.zeros(c.numel(), 3, n, n, dtype=torch.float64)
    x[torch.arange(c.numel()), c, y0 + ry, y0 + rx] = 1
    with torch.no_grad():
        f = cascade(g, x)                                    # (3*s*s) x C x h x w
    f = f.view(3, s, s, *f.shape[1:])                        # channel, phase y, phase x, C, h, w
    k = torch.arange(K)
    r = (k - P) % s                                          # the phase that reaches tap k
    p = (y0 + r + P - k) // s                                # the output it reaches it at
    assert ((y0 + r + P - k) % s == 0).all() and p.min() >= 0 and p.max() < f.shape[-1]
    i3, iy, ix = torch.arange(3).view(3, 1, 1), k.view(1, K, 1), k.view(1, 1, K)
    W = f[i3, r[iy], r[ix], :, p[iy], p[ix]]                 # 3 x K x K x C
    return W.permute(3, 0, 1, 2).contiguous()


def reference_hint(W, images, channels, mean, std, stride, padding, gains=None):
    """decode(mask * gains * encode(normalise(x))) with an explicit kernel, in float64.

    W: C x 3 x K x K; images: B x 3 x H x W in [0, 1]; returns B x 3 x H' x W' (raw hint, unbounded).
    """
    x = (images.double() - torch.tensor(mean).view(1, 3, 1, 1).double()) / torch.tensor(std).view(1, 3, 1, 1).double()
    f = F.conv2d(x, W, stride=stride, padding=padding)
    mask = torch.zeros(W.shape[0], dtype=torch.float64)
    mask[channels] = 1 if gains is None else torch.as_tensor(gains, dtype=torch.float64)
    return F.conv_transpose2d(f * mask.view(1, -1, 1, 1), W, stride=stride, padding=padding)

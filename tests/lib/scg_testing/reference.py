"""An independent reference for the hint, written for the tests.

The composite kernel is measured, not composed: unit impulses are pushed through the
factor cascade run as plain strided convolutions (the authors' "retina → bipolar → LGN"
reading of the factors), and the responses are read back into a kernel. The hint is then
an explicit ``conv2d`` → mask → ``conv_transpose2d`` with that kernel.
"""
import torch
import torch.nn.functional as F


def cascade(g, x):
    """Features of the factor cascade with 'same' paddings, all channels (stride 4 or 4)."""
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
    """Composite kernel C×3×K×K read from the cascade's impulse responses.

    An impulse at input position y feeds output p through tap k = y - stride·p + P, with
    P = (K-1)/2; ``stride²`` impulse phases per input channel cover every tap.
    """
    import copy

    g = copy.deepcopy(g).double()
    K, s = kernel_size, stride
    P = (K - 1) // 2
    n = 8 * K  # big enough that borders never touch the taps read
    y0 = (n // 2) // s * s
    W = None
    with torch.no_grad():
        for c in range(3):
            for ry in range(s):
                for rx in range(s):
                    x = torch.zeros(1, 3, n, n, dtype=torch.float64)
                    x[0, c, y0 + ry, y0 + rx] = 1
                    f = cascade(g, x)[0]
                    if W is None:
                        W = torch.zeros(f.shape[0], 3, K, K, dtype=torch.float64)
                    for py in range(f.shape[1]):
                        ky = y0 + ry - s * py + P
                        if not 0 <= ky < K:
                            continue
                        for px in range(f.shape[2]):
                            kx = y0 + rx - s * px + P
                            if 0 <= kx < K:
                                W[:, c, ky, kx] = f[:, py, px]
    return W


def reference_hint(W, images, channels, mean, std, stride, padding, gains=None):
    """decode(mask · gains · encode(normalise(x))) with an explicit kernel, in float64."""
    x = (images.double() - torch.tensor(mean).view(1, 3, 1, 1).double()) / torch.tensor(std).view(1, 3, 1, 1).double()
    f = F.conv2d(x, W, stride=stride, padding=padding)
    mask = torch.zeros(W.shape[0], dtype=torch.float64)
    mask[channels] = 1 if gains is None else torch.as_tensor(gains, dtype=torch.float64)
    return F.conv_transpose2d(f * mask.view(1, -1, 1, 1), W, stride=stride, padding=padding)

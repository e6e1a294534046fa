"""The hint against an independent reference (measured kernel, explicit conv/transposed conv)."""
import pytest
import torch
import torch.nn.functional as F

from scg_models import AUTHORS_MEAN, AUTHORS_STD
from scg_testing.authors_files import AE_KEYS, authors_arg
from scg_testing.core import images, random_ae
from scg_testing.reference import measured_kernel, reference_hint

CASCADED = ["Bipolar", "Bipolar_ks3", "Bipolar_1x1", "Vanilla_2layer", "Vanilla_2layer_nogroup"]


@pytest.mark.parametrize("gonlin", CASCADED)
def test_composite_kernel_equals_measured_cascade(gonlin):
    ae = random_ae(gonlin)
    W = measured_kernel(ae.gonlin, ae.kernel_size)
    got = ae.kernel().double()
    assert got.shape == W.shape == (64, 3, ae.kernel_size, ae.kernel_size)
    assert torch.allclose(got, W, rtol=0, atol=1e-6 * W.abs().max())


def test_the_default_configuration_is_the_released_one():
    """The default model has the factor layers of the authors' equ_nv16_vl4_rn1_Bipolar_norm.pth (their key names
    and shapes), composes them into the 21x21 kernel of their arg, and gives their 509x509 hint at 512."""
    ae = random_ae("Bipolar")
    assert {k.removeprefix("gonlin."): tuple(v.shape) for k, v in ae.state_dict().items()} == AE_KEYS
    arg = authors_arg()
    assert (ae.kernel_size, ae.stride, ae.padding) == (arg.lgn_kernel_size, arg.lgn_stride, arg.lgn_padding)
    assert ae.output_size(512, 512) == (509, 509)
    x = images(1, 512, 512)
    assert ae.hint(x, "HC3").shape == (1, 3, 509, 509)


@pytest.mark.parametrize("gonlin", CASCADED)
@pytest.mark.parametrize("selection,gains", [("HC0", None), ("HC3", None), ("all", None), ("HC0", "0:1.5,4:0.5")])
def test_hint_matches_reference(gonlin, selection, gains):
    ae = random_ae(gonlin)
    W = measured_kernel(ae.gonlin, ae.kernel_size)
    x = images(2, 61, 75)  # odd, non-square sizes
    mods = ae.resolve_modules(selection)
    g = None
    if gains:
        table = dict((int(a), float(b)) for a, b in (p.split(":") for p in gains.split(",")))
        g = [table.get(m, 1.0) for m in mods for _ in range(4)]
    ref = reference_hint(W, x, ae.channels(mods), AUTHORS_MEAN, AUTHORS_STD, 4, ae.padding, g)
    got = ae.hint(x, selection, gains)
    assert got.shape == ref.shape
    assert ((got.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


@pytest.mark.parametrize("stride", [2, 3])
def test_non_cascade_strides_and_vanilla_use_composite_path(stride):
    for gonlin, kw in (("Bipolar", {}), ("Vanilla", {"kernel_size": 17})):
        ae = random_ae(gonlin, stride=stride, **kw)
        W = ae.kernel().double()
        x = images(1, 50, 47)
        ref = reference_hint(W, x, ae.channels([3, 10]), AUTHORS_MEAN, AUTHORS_STD, stride, ae.padding)
        got = ae.hint(x, [3, 10])
        assert got.shape == ref.shape == (1, 3) + ae.output_size(50, 47)
        assert ((got.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_hint_is_authors_forward_for_a_selection():
    """The authors' path: full 64-channel encode, channel mask, full decode."""
    ae = random_ae()
    x = images(1, 96, 96)
    w = ae.kernel()
    f = F.conv2d(ae.normalize(x), w, stride=4, padding=10)
    mask = torch.zeros(1, 16, 1, 1)
    mask[:, [5, 12]] = 1
    ref = F.conv_transpose2d(f * mask.repeat_interleave(4, 1), w, stride=4, padding=10)
    assert torch.allclose(ae.hint(x, "HC2"), ref, atol=1e-5 * ref.abs().max())


def test_gains_scale_modules_linearly():
    ae = random_ae()
    x = images(1, 64, 64)
    h1 = ae.hint(x, [0])
    h2 = ae.hint(x, [0], "0:2")
    assert torch.allclose(h2, 2 * h1, atol=1e-6)
    assert torch.allclose(ae.hint(x, [0, 1], [1.0, 0.0]), h1, atol=1e-6)


def test_encode_decode_are_tied_adjoints():
    ae = random_ae()
    x = torch.randn(1, 3, 45, 45, dtype=torch.float64)
    f = torch.randn(1, 64, 12, 12, dtype=torch.float64)
    ae = ae.double()
    lhs = (ae.encode(x, normalize=False) * f).sum()
    y = ae.decode(f)
    assert y.shape[-2:] == (45, 45)
    rhs = (x * y).sum()
    assert torch.allclose(lhs, rhs)


def test_preview_range_and_constant_guard():
    ae = random_ae()
    x = images(2, 64, 64)
    p = ae.preview(x, "HC0")
    assert p.shape == (2, 3, 61, 61) and p.min() >= 0 and p.max() <= 1
    assert torch.isclose(p.amin(dim=(-2, -1)), torch.zeros(2, 3)).all()
    assert torch.isclose(p.amax(dim=(-2, -1)), torch.ones(2, 3)).all()
    flat = ae.preview(x, [0], [0.0])  # an all-zero hint: no division by ~0
    assert torch.isfinite(flat).all() and torch.equal(flat, torch.full_like(flat, 0.5))


def test_kernel_composed_once_per_weights():
    ae = random_ae("Vanilla_2layer")  # a gonlin that runs on the composite kernel
    calls = []
    orig = ae.gonlin.kernel
    ae.gonlin.kernel = lambda: calls.append(1) or orig()
    x = images(1, 40, 40)
    ae.hint(x, "HC0")
    ae.hint(x, "HC3")
    assert len(calls) == 1
    with torch.no_grad():
        ae.gonlin.c1.weight.mul_(2)  # new weights: recomposed
    ae.hint(x, "HC0")
    assert len(calls) == 2


def test_dtype_follows_model():
    ae = random_ae().to(torch.float64)
    assert ae.hint(images(1, 40, 40), "HC3").dtype == torch.float64
    assert ae.hint(images(1, 40, 40).double(), "HC3").dtype == torch.float64

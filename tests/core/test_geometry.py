"""scg_models.geometry: the hint's size, its canvas at the generation size, and the encoded hint image."""
import pytest
import torch

from scg_models import AutoencoderConfig, ModularAutoencoder, SCGError
from scg_models.geometry import ENCODE_SCALE, HINT_LIMIT, HintGeometry, generation_size

AUTHORS = HintGeometry(kernel=21, stride=4, padding=10)


@pytest.mark.parametrize("size,hint", [((512, 512), (509, 509)), ((768, 768), (765, 765)), ((512, 768), (509, 765)),
                                       ((64, 80), (61, 77))])
def test_hint_size_is_the_autoencoders(size, hint):
    torch.manual_seed(0)
    ae = ModularAutoencoder(AutoencoderConfig())
    assert AUTHORS.hint_size(*size) == hint == HintGeometry.of(ae).hint_size(*size) == ae.output_size(*size)
    x = torch.rand(1, 3, *size) if size[0] * size[1] <= 64 * 80 else None
    if x is not None:
        assert ae.hint(x, "HC0").shape[-2:] == hint


@pytest.mark.parametrize("size,resolution,expected", [
    ((512, 512), 512, (512, 512)), ((512, 768), 512, (512, 768)), ((768, 512), 512, (768, 512)),
    ((1080, 1920), 512, (512, 912)), ((90, 120), 128, (128, 168)), ((100, 80), 64, (80, 64)), ((33, 33), 60, (64, 64)),
])
def test_generation_size_short_side_and_multiples_of_8(size, resolution, expected):
    out = generation_size(*size, resolution)
    assert out == expected and all(n % 8 == 0 for n in out)


def test_raw_canvas_is_bit_exact_and_zero_around():
    hint = torch.randn(2, 3, 61, 77) * 3
    canvas = AUTHORS.to_canvas(hint, 64, 80, encode=False)
    assert canvas.shape == (2, 3, 64, 80) and (canvas[..., 61:, :] == 0).all() and (canvas[..., 77:] == 0).all()
    assert torch.equal(AUTHORS.from_canvas(canvas, encoded=False), hint)


def test_encoded_canvas_is_an_image_with_an_exact_inverse():
    hint = torch.randn(2, 3, 61, 77) * 4
    hint[0, 0, 0, 0], hint[0, 0, 0, 1] = HINT_LIMIT, -HINT_LIMIT
    canvas = AUTHORS.to_canvas(hint, 64, 80, encode=True)
    assert canvas.dtype == torch.float32 and 0 <= canvas.min() and canvas.max() <= 1
    assert torch.equal(canvas.clamp(0, 1), canvas)  # nodes that clamp images change nothing
    assert (canvas[..., 61:, :] == 0.5).all() and (canvas[..., 77:] == 0.5).all()  # a zero hint around it
    assert (AUTHORS.from_canvas(canvas, encoded=True) - hint).abs().max() <= ENCODE_SCALE * 2.0 ** -24
    eight_bit = (canvas * 255).round() / 255
    assert (AUTHORS.from_canvas(eight_bit, encoded=True) - hint).abs().max() <= ENCODE_SCALE / 510 + 1e-5


@pytest.mark.parametrize("encode", [True, False])
@pytest.mark.parametrize("bad,match", [(float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"),
                                       (HINT_LIMIT * 1.01, "beyond the"), (-1e30, "beyond the")])
def test_garbage_hints_are_refused(encode, bad, match):
    hint = torch.zeros(1, 3, 61, 61)
    hint[0, 1, 5, 5] = bad
    with pytest.raises(SCGError, match=f"hint: .*{match}"):
        AUTHORS.to_canvas(hint, 64, 64, encode=encode)

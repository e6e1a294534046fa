"""HypercolumnExtract in the host: outputs, chunking with a progress bar, conversions and errors."""
import comfy.utils
import pytest
import torch

from scg_models import minmax
from scg_models.geometry import HintGeometry
from scg_models.grid import group_grid
from scg_models.imaging import fit
from scg_testing.host import make_images, random_ae, run_node


@pytest.fixture(scope="module")
def ae():
    return random_ae(seed=3)


@pytest.fixture()
def extract(node):
    cls = node("HypercolumnExtract")
    return lambda **kw: run_node(cls, **{"modules": "HC0", "gains": "", "grid": "labelled", "resolution": 64, **kw})


def decoded(ae, hint_image):
    """The hint an SCG ControlNet reads from HypercolumnExtract's hint output (B x 3 x h x w)."""
    return HintGeometry.of(ae).from_canvas(hint_image.movedim(-1, 1), encoded=True)


def test_outputs(ae, scg_ae, extract):
    img = make_images(batch=2, height=64, width=80)
    hint, preview, grid = extract(image=img, scg_autoencoder=scg_ae, modules="HC1", gains="2:1.5")
    x = img.movedim(-1, 1)
    expected = ae.hint(x, "HC1", "2:1.5")
    assert expected.min() < 0 and expected.max() > 0  # the raw hint leaves [0, 1]...
    assert hint.shape == (2, 64, 80, 3) and hint.dtype == torch.float32  # ...its image does not
    assert 0 <= hint.min() and hint.max() <= 1
    assert torch.equal(hint.clamp(0, 1), hint)  # nodes that clamp change nothing
    assert (decoded(ae, hint) - expected).abs().max() <= 64 * 2.0 ** -24
    assert (hint[:, 61:] == 0.5).all() and (hint[:, :, 77:] == 0.5).all()  # around the hint: a zero hint
    eight_bit = (hint * 255).round() / 255  # what a node that stores 8-bit images does
    assert (decoded(ae, eight_bit) - expected).abs().max() <= 64 / 510 + 1e-5
    assert torch.equal(preview, minmax(expected).movedim(1, -1))
    assert preview.min() >= 0 and preview.max() <= 1
    sheet = group_grid(ae, x).movedim(1, -1)
    assert torch.equal(grid, sheet) and grid.shape[0] == 2
    plain = extract(image=img, scg_autoencoder=scg_ae, grid="plain")[2]
    assert plain.shape == grid.shape and not torch.equal(plain, grid)  # same sheet, no labels
    off = extract(image=img, scg_autoencoder=scg_ae, grid="off")[2]
    assert off.shape[0] == 2 and off.abs().sum() == 0


def test_gains_by_group_name(ae, scg_ae, extract):
    img = make_images()
    by_group = extract(image=img, scg_autoencoder=scg_ae, modules="HC0+HC1", gains="HC0:2", grid="off")[0]
    explicit = extract(image=img, scg_autoencoder=scg_ae, modules="HC0+HC1", gains="0:2,1:2,4:2,8:2,9:2,15:2",
                       grid="off")[0]
    plain = extract(image=img, scg_autoencoder=scg_ae, modules="HC0+HC1", grid="off")[0]
    assert torch.equal(by_group, explicit) and not torch.equal(by_group, plain)
    uniform = extract(image=img, scg_autoencoder=scg_ae, modules="HC0", gains="1.5", grid="off")[0]
    once = decoded(ae, extract(image=img, scg_autoencoder=scg_ae, grid="off")[0])
    assert torch.allclose(decoded(ae, uniform), 1.5 * once, atol=1e-4)


@pytest.mark.parametrize("size,resolution,canvas,hint", [
    ((64, 80), 64, (64, 80), (61, 77)),  # the short side is the resolution
    ((100, 80), 64, (80, 64), (77, 61)),  # portrait
    ((512, 512), 512, (512, 512), (509, 509)),  # the released model's geometry
    ((90, 120), 128, (128, 168), (125, 165)),  # upscaled, long side rounded to a multiple of 8
])
def test_resolution_sizes_the_hint_for_the_generation(ae, scg_ae, extract, size, resolution, canvas, hint):
    img = make_images(height=size[0], width=size[1])
    out, preview, _ = extract(image=img, scg_autoencoder=scg_ae, resolution=resolution, grid="off")
    assert out.shape[1:3] == canvas and preview.shape[1:3] == hint
    expected = ae.hint(fit(img.movedim(-1, 1), *canvas), "HC0")
    assert (decoded(ae, out) - expected).abs().max() <= 64 * 2.0 ** -24


def test_chunks_and_progress(host, ae, scg_ae, extract, monkeypatch):
    extract_module = host.pack.nodes.extract
    monkeypatch.setattr(extract_module, "MAX_CHUNK", 2)
    seen = []

    class RecordingBar(comfy.utils.ProgressBar):
        """Records every update the node makes (newer hosts throttle what reaches the UI hook by time)."""

        def update_absolute(self, value, total=None, preview=None):
            seen.append((value, total or self.total))
            return super().update_absolute(value, total, preview)

    monkeypatch.setattr(comfy.utils, "ProgressBar", RecordingBar)
    img = make_images(batch=5, seed=9)
    hint, preview, grid = extract(image=img, scg_autoencoder=scg_ae)
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert torch.allclose(decoded(ae, hint), ae.hint(img.movedim(-1, 1), "HC0"), atol=1e-5)
    assert grid.shape[0] == 5


def test_halves_the_chunk_when_out_of_memory(host, ae, scg_ae, extract, monkeypatch):
    extract_module = host.pack.nodes.extract
    calls = []
    original = ae.hint

    def flaky(images, *a, **kw):
        calls.append(images.shape[0])
        if images.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(images, *a, **kw)

    monkeypatch.setattr(ae, "hint", flaky)
    monkeypatch.setattr(extract_module, "MAX_CHUNK", 4)
    img = make_images(batch=3)
    hint = extract(image=img, scg_autoencoder=scg_ae, grid="off")[0]
    assert calls == [3, 1, 1, 1] and hint.shape[0] == 3


def test_grey_and_rgba(ae, scg_ae, extract, caplog):
    rgb = make_images()
    with caplog.at_level("INFO"):
        grey_hint = extract(image=rgb[..., :1], scg_autoencoder=scg_ae, grid="off")[0]
        assert "grey image (1 channel) repeated to RGB" in caplog.text
        rgba_hint = extract(image=torch.cat([rgb, rgb[..., :1]], -1), scg_autoencoder=scg_ae, grid="off")[0]
        assert "alpha channel dropped" in caplog.text
    assert torch.equal(rgba_hint, extract(image=rgb, scg_autoencoder=scg_ae, grid="off")[0])
    grey = rgb[..., :1].expand(-1, -1, -1, 3).movedim(-1, 1)
    assert (decoded(ae, grey_hint) - ae.hint(grey, "HC0")).abs().max() <= 64 * 2.0 ** -24


@pytest.mark.parametrize("kw,message", [
    ({"image": torch.rand(1, 64, 64)}, "image: got a MASK-shaped tensor"),
    ({"image": torch.rand(1, 64, 64, 3) * 255}, r"image: values must lie in \[0, 1\]"),
    ({"image": torch.rand(1, 8, 8, 3)}, "image: 8x8 is smaller than the 21x21 kernel"),
    ({"image": torch.full((1, 32, 32, 3), float("nan"))}, "image: contains NaN or infinite values"),
    ({"image": torch.rand(0, 32, 32, 3)}, "image: the batch is empty"),
    ({"gains": "1e30"}, "^gains"),  # refused when parsed, or when the hint is made
    ({"resolution": 10}, "resolution: expected a whole number from 64"),
    ({"modules": "colour"}, "modules: unknown group 'colour'"),
    ({"modules": ""}, "modules: the module selection is empty"),
    ({"gains": "0:abc"}, "gains: the gain of module 0 is 'abc'; expected a number"),
    ({"gains": "colour:2"}, "gains: cannot read 'colour:2': 'colour' is neither a module index nor a group; groups: HC0"),
    ({"scg_autoencoder": None}, "scg_autoencoder: connect an SCG autoencoder"),
])
def test_errors_name_the_input(scg_ae, extract, scg_error, kw, message):
    args = {"image": make_images(), "scg_autoencoder": scg_ae, **kw}
    with pytest.raises(scg_error, match=message):
        extract(**args)

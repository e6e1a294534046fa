"""The workflows' example inputs (``workflows/scg_example_<kind>.jpg``) are made by ``scripts/example_inputs.py``
from the example photo: re-running it reproduces the shipped files, and each image is what its name says."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "example_inputs.py"


def _module():
    spec = importlib.util.spec_from_file_location("example_inputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = _module()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (512, 512), (path, im.format, im.mode, im.size)
        return np.asarray(im, dtype=np.float64) / 255.0


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return pixels(ex.SOURCE)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("examples")
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(out / ex.file_name(k)) for k in ex.KINDS]
    return out


@pytest.mark.parametrize("kind", ex.KINDS)
def test_rerunning_the_script_reproduces_the_shipped_file(kind, regenerated):
    shipped = pixels(ex.WORKFLOWS / ex.file_name(kind))
    again = pixels(regenerated / ex.file_name(kind))
    diff = np.abs(shipped - again) * 255
    # the same pixels up to the JPEG coder's rounding (another libjpeg build may round differently)
    assert diff.mean() < 0.5 and diff.max() <= 8, (diff.mean(), diff.max())


@pytest.mark.parametrize("kind", ex.KINDS)
def test_rendering_is_deterministic(kind):
    assert np.array_equal(ex.render(kind), ex.render(kind))


def test_every_workflow_input_is_a_shipped_file_made_here():
    """Each image a workflow loads is in workflows/: the photo, or one of the script's renderings."""
    made = {ex.SOURCE.name} | {ex.file_name(k) for k in ex.KINDS}
    used = set()
    for path in ex.WORKFLOWS.glob("*.json"):
        for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]:
            if node["type"] == "LoadImage":
                used.add(node["widgets_values"][0])
    assert used and used <= made, used - made
    assert {ex.file_name(k) for k in ex.KINDS} <= used  # every rendering has a workflow
    assert all((ex.WORKFLOWS / name).is_file() for name in made)


def test_sketch_is_dark_lines_on_white_paper(source):
    img = pixels(ex.WORKFLOWS / ex.file_name("sketch"))
    assert np.abs(img - img.mean(axis=2, keepdims=True)).max() < 0.04  # grey: no colour
    grey = img.mean(axis=2)
    assert np.median(grey) > 0.9  # mostly paper
    lines = grey < 0.6
    assert 0.01 < lines.mean() < 0.2, lines.mean()
    # the lines lie on the photo's edges: the luminance gradient is much larger under them
    lum = ex.luminance(source)
    grad = np.hypot(*np.gradient(ex.gaussian_blur(lum, 2.0)))
    assert grad[lines].mean() > 2 * grad[~lines].mean()


def test_ink_is_a_monochrome_wash_of_the_photo(source):
    img = pixels(ex.WORKFLOWS / ex.file_name("ink"))
    chroma = img.max(axis=2) - img.min(axis=2)
    assert chroma.max() < 0.15  # ink on warm paper: nearly no colour
    grey = img.mean(axis=2)
    assert len(np.unique(np.round(grey, 1))) >= 6  # several ink tones, not a binary drawing
    # dark where the photo is dark: its tones follow the photo's luminance
    assert np.corrcoef(grey.ravel(), ex.gaussian_blur(ex.luminance(source), 3.0).ravel())[0, 1] > 0.6


def test_hazy_copy_follows_the_scattering_model(source):
    """I = J t + A (1 - t): one transmission per pixel for all three channels, thicker haze at the top."""
    img = pixels(ex.WORKFLOWS / ex.file_name("hazy"))
    airlight = np.array([0.80, 0.84, 0.90])
    far = np.abs(source - airlight).min(axis=2) > 0.25  # channels far enough from A to read t from
    assert far.mean() > 0.2
    t = (img[far] - airlight) / (source[far] - airlight)  # per channel; equal where the model holds
    spread = t.max(axis=1) - t.min(axis=1)
    assert np.median(spread) < 0.1, np.median(spread)
    t_mean = np.median(t, axis=1)
    rows = np.nonzero(far)[0]
    assert 0.2 < t_mean.min() and t_mean.max() < 0.85
    assert np.median(t_mean[rows < 128]) < np.median(t_mean[rows >= 384]) - 0.1  # far (top) hazier than near
    assert img.min() > 0.15 and img.std() < 0.6 * source.std()  # no black left, contrast lost


def test_dark_copy_is_a_noisy_low_light_exposure(source):
    img = pixels(ex.WORKFLOWS / ex.file_name("dark"))
    assert 0.04 < img.mean() < 0.15 and np.percentile(img, 99) < 0.4  # as dark as LOL's low-light photos
    # the same picture: the dark copy's smoothed luminance ranks pixels like the photo's
    a = ex.gaussian_blur(ex.luminance(img), 2.0).ravel()
    b = ex.luminance(source) ** 1.6
    assert np.corrcoef(a, ex.gaussian_blur(b, 2.0).ravel())[0, 1] > 0.95
    # with sensor noise: a flat-field residual well above JPEG's, below the signal
    residual = ex.luminance(img) - ex.gaussian_blur(ex.luminance(img), 1.5)
    assert 0.003 < residual.std() < 0.05, residual.std()

"""Make the example inputs of the workflows from the example photo: a line sketch, an ink-wash rendering, a
hazy copy and a dark copy (``workflows/scg_example_<kind>.jpg``).

    python scripts/example_inputs.py                 # rewrites the four files in workflows/
    python scripts/example_inputs.py --out DIR       # writes them to DIR instead

Deterministic (fixed seeds, numpy and Pillow only): running it again gives the shipped files' pixels, to
JPEG's rounding. Every input is drawn by this code from ``workflows/scg_example.jpg``.

* **sketch**: pencil lines on white paper, from an extended difference of Gaussians of the luminance (XDoG).
* **ink**: a monochrome ink-wash rendering: the luminance smoothed into a few soft ink tones, dark brush lines
  from a coarser difference of Gaussians, on warm paper with a faint fibre texture.
* **hazy**: the atmospheric scattering model ``I = J t + A (1 - t)``, transmission ``t = exp(-beta d)`` with a
  depth ``d`` that grows towards the top of the frame, and a bluish-grey airlight ``A``.
* **dark**: a low-light exposure: ``gain * J ** gamma`` plus shot and read noise, about as dark as the LOL
  low-light photos the authors' BrainSee-SCG restores (mean level about 0.08, highlights below 0.4).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SOURCE = WORKFLOWS / "scg_example.jpg"
KINDS = ("sketch", "ink", "hazy", "dark")
JPEG_QUALITY = 92
SEED = 20240918  # the paper's arXiv month; any fixed number works


def file_name(kind: str) -> str:
    return f"scg_example_{kind}.jpg"


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders.

    Args:
        image: H x W float array.
        sigma: standard deviation in pixels (> 0).
    """
    radius = max(1, int(3 * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(image, radius, mode="reflect")
    rows = sum(kernel[i] * padded[:, i:i + image.shape[1]] for i in range(kernel.size))
    return sum(kernel[i] * rows[i:i + image.shape[0]] for i in range(kernel.size))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an H x W x 3 array in [0, 1]."""
    return rgb @ np.array([0.299, 0.587, 0.114])


def xdog(grey: np.ndarray, sigma: float, k: float = 1.6, tau: float = 0.98, eps: float = -0.01,
         phi: float = 60.0) -> np.ndarray:
    """Extended difference of Gaussians: 1 on flat areas, falling to 0 on dark-side edges (H x W, [0, 1])."""
    d = gaussian_blur(grey, sigma) - tau * gaussian_blur(grey, sigma * k)
    return np.where(d >= eps, 1.0, 1.0 + np.tanh(phi * (d - eps)))


def sketch(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    grey = luminance(rgb)
    lines = xdog(grey, 0.9) * xdog(grey, 1.8, phi=30.0) ** 0.5  # fine contours and a few bolder strokes
    paper = 0.97 + 0.01 * gaussian_blur(rng.standard_normal(grey.shape), 1.0)
    pencil = np.clip(paper * (0.18 + 0.82 * lines), 0, 1)
    return np.repeat(pencil[..., None], 3, axis=2)


def ink(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    grey = gaussian_blur(luminance(rgb), 3.0)
    levels = np.array([0.10, 0.38, 0.70, 1.0])  # ink washes, darkest to bare paper
    steps = np.clip(grey * 1.15 * (levels.size - 1), 0, levels.size - 1)
    low = np.minimum(np.floor(steps).astype(int), levels.size - 2)
    frac = np.clip((steps - low - 0.5) * 4 + 0.5, 0, 1)  # soft edges between the washes
    tone = levels[low] + (levels[low + 1] - levels[low]) * frac
    strokes = xdog(gaussian_blur(luminance(rgb), 1.0), 1.5, phi=25.0)  # brush contours
    fibres = gaussian_blur(rng.standard_normal(grey.shape), 1.5)
    ink_level = np.clip(tone * (0.15 + 0.85 * strokes) + 0.015 * fibres / fibres.std(), 0, 1)
    paper = np.array([0.95, 0.92, 0.84])  # warm rice paper; the ink a slightly cool black
    black = np.array([0.10, 0.10, 0.12])
    return black + (paper - black) * ink_level[..., None]


def hazy(rgb: np.ndarray, rng: np.random.Generator, beta: float = 1.0,
         airlight: tuple[float, float, float] = (0.80, 0.84, 0.90)) -> np.ndarray:
    h, w = rgb.shape[:2]
    rows = np.linspace(1.0, 0.0, h)[:, None]  # 1 at the top (far), 0 at the bottom (near)
    patches = gaussian_blur(rng.standard_normal((h, w)), 25.0)  # uneven haze: soft patches of +-0.08
    depth = 0.55 + 0.5 * rows + 0.08 * patches / patches.std()
    t = np.exp(-beta * np.clip(depth, 0.3, 1.2))[..., None]
    return rgb * t + np.array(airlight) * (1 - t)


def dark(rgb: np.ndarray, rng: np.random.Generator, gamma: float = 1.6, gain: float = 0.24,
         shot: float = 0.004, read: float = 0.006) -> np.ndarray:
    signal = gain * rgb ** gamma
    noise = rng.standard_normal(rgb.shape) * np.sqrt(shot * signal + read ** 2)
    return np.clip(signal + noise, 0, 1)


RENDER = {"sketch": sketch, "ink": ink, "hazy": hazy, "dark": dark}


def render(kind: str, source: Path = SOURCE) -> np.ndarray:
    """The example input ``kind`` (one of :data:`KINDS`) as an H x W x 3 uint8 array."""
    with Image.open(source) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    rng = np.random.default_rng([SEED, KINDS.index(kind)])
    out = RENDER[kind](rgb, rng)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def write(out: Path, kinds=KINDS) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in kinds:
        path = out / file_name(kind)
        Image.fromarray(render(kind)).save(path, "JPEG", quality=JPEG_QUALITY, optimize=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WORKFLOWS, help="folder for the images (default: workflows/)")
    parser.add_argument("--kind", choices=KINDS, action="append", help="only this kind (repeatable)")
    args = parser.parse_args(argv)
    for path in write(args.out, args.kind or KINDS):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared pieces of the tests/train_controlnet tier (imported by its test modules and conftest)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _tiny_spec() -> dict:
    from train.sd15 import TINY_SPEC

    return TINY_SPEC


TINY_SPEC = _tiny_spec()  # the tiny SD1.5-architecture base (train/sd15.py): 64-channel UNet, tiny CLIP, TAESD
RES = 32  # training resolution of the tests: latent 4×4, hint 29×29


def make_images(folder: Path, n: int, seed: int = 0, captions: bool = True) -> list[str]:
    """``n`` small patterned images of assorted sizes (some with a ``.txt`` caption)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        h, w = [(40, 48), (64, 64), (50, 36), (33, 70), (64, 40), (48, 48)][i % 6]
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(np.sin(xx / (2 + i)) + 1) * 127, (np.cos(yy / (3 + i)) + 1) * 127,
                        rng.uniform(0, 255, (h, w))], -1).astype(np.uint8)
        name = f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(img).save(folder / name)
        if captions and i % 2 == 0:
            (folder / name).with_suffix(".txt").write_text(f"a pattern number {i} (stripes)\n")
        names.append(name)
    return names


def train_args(files, out, *extra) -> list[str]:
    """A fast command line on the tiny models (override any option by appending it)."""
    return ["--base", files["base"], "--autoencoder", files["ae"], "--modules", "HC0", "--data", files["data"],
            "--out", str(out), "--resolution", str(RES), "--batch-size", "2", "--workers", "0", "--samples", "0",
            "--eval-images", "0", "--sample-every", "0", "--save-every", "1000", "--no-progress",
            "--precision", "fp32", "--cpu", *extra]


def run_train(argv):
    from train.controlnet import build_parser, run

    return run(build_parser().parse_args(argv))


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env

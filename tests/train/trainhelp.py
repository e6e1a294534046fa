"""Shared settings of the tests/train tier (imported by its test modules)."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: a tiny recipe: every run here takes seconds on one CPU core
TINY = ["--batch-size", "4", "--crop", "48", "--codebook-translate", "3", "--codebook-rotate", "4",
        "--log-every", "1", "--sheet-every", "0", "--no-progress", "--threads", "1"]


def skimage_or_skip():
    return pytest.importorskip("skimage", reason="scikit-image (the embedded default photographs) is not installed")


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env

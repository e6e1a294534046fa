"""Shared pieces of the trainer tiers (``tests/trainer_autoencoder``, ``tests/trainer_controlnet``).

Run by path under ``torchrun``, this file is ``python -m train.autoencoder`` with every file
write of each rank recorded in ``$SCG_PROBE_DIR/rank<N>.txt`` (the "only rank 0 writes" test).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]

#: a tiny autoencoder recipe: every run takes seconds on one CPU core
TINY_AE = ["--batch-size", "4", "--crop", "48", "--codebook-translate", "3", "--codebook-rotate", "4",
           "--log-every", "1", "--sheet-every", "0", "--no-progress", "--threads", "1"]
#: training resolution of the ControlNet tests: latent 4x4, hint 29x29
RES = 32
#: the ControlNet trainer with the tiny-base hook installed (subprocess and torchrun tests run it by path)
CONTROLNET_SCRIPT = str(ROOT / "tests" / "lib" / "scg_testing" / "tiny_sd15.py")
#: the autoencoder trainer recording every rank's writes (this file, run by path)
PROBE_SCRIPT = str(Path(__file__).resolve())


def skimage_or_skip():
    return pytest.importorskip("skimage", reason="scikit-image (the embedded default photographs) is not installed")


def child_env(**extra: str) -> dict:
    """The environment of a trainer subprocess: this checkout importable, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests" / "lib"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def make_images(folder: Path, n: int, seed: int = 0, captions: bool = True) -> list[str]:
    """``n`` small patterned images of assorted sizes (every other one with a ``.txt`` caption)."""
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


def controlnet_args(files: dict, out, *extra) -> list[str]:
    """A fast ControlNet-trainer command line on the tiny models (override any option by appending it)."""
    return ["--base", files["base"], "--autoencoder", files["ae"], "--modules", "HC0", "--data", files["data"],
            "--out", str(out), "--resolution", str(RES), "--batch-size", "2", "--workers", "0", "--samples", "0",
            "--eval-images", "0", "--sheet-every", "0", "--ckpt-every", "1000", "--no-progress",
            "--precision", "fp32", "--device", "cpu", *extra]


def run_controlnet(argv) -> dict:
    """``train.controlnet`` in this process (tiny-base hook installed); returns its summary: the
    ``end`` event of its metrics log (``done`` is true exactly when the command returned 0)."""
    from scg_testing import tiny_sd15
    from train import controlnet, runtime

    tiny_sd15.install()
    options = controlnet.parse(argv)
    code = controlnet.train(argv)
    work_dir = options.work_dir or runtime.default_work_dir(options.out)
    records = runtime.MetricsLog(os.path.join(work_dir, "metrics.jsonl"), 0, enabled=False).records()
    summary = [r for r in records if r.get("event") == "end"][-1]
    assert code == (0 if summary["done"] else 130), (code, summary)
    return summary


def _probe_main() -> int:
    import builtins

    import scg_models
    from train import autoencoder, runtime

    log = builtins.open(os.path.join(os.environ["SCG_PROBE_DIR"], f"rank{os.environ.get('RANK', '0')}.txt"), "a")

    def record(what: str) -> None:
        log.write(what + "\n")
        log.flush()

    real_write = runtime.atomic_write

    def atomic_write(path, write, *a, **k):
        record(f"write {path}")
        return real_write(path, write, *a, **k)

    def opener(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            record(f"open {file} {mode}")
        return builtins.open(file, mode, *a, **k)

    real_save = scg_models.save_autoencoder

    def save_autoencoder(ae, path, *a, **k):
        record(f"model {path}")
        return real_save(ae, path, *a, **k)

    runtime.atomic_write = atomic_write
    runtime.open = opener
    scg_models.save_autoencoder = save_autoencoder
    return autoencoder.main()


if __name__ == "__main__":
    sys.exit(_probe_main())


def assert_same_training(candidate: dict, reference: dict, other: dict, steps: int, lr: float) -> None:
    """``candidate`` (e.g. a two-process run) trained like ``reference`` (one process), as far as a test can tell.

    Equal up to the order of the all-reduce sums: AdamW turns rounding in a near-zero gradient into an
    lr-sized step, so some weights may differ by up to ``steps * lr``; a run that saw other data or noise
    (``other``, another seed) differs almost everywhere, so the candidate must differ in far fewer weights.
    """
    def differing(weights):
        return sum(int(((weights[k] - v).abs() > 1e-6).sum()) for k, v in reference.items())

    near, far = differing(candidate), differing(other)
    worst = max(float((candidate[k] - v).abs().max()) for k, v in reference.items())
    assert worst <= steps * lr * 1.01 and near * 10 < far, (worst, near, far)

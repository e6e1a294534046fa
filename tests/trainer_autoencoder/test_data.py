"""Training data: recursive folders, corrupt files skipped and counted, a deterministic plan."""
import json
import os

import numpy as np
import torch
from PIL import Image

import scg_models
from scg_testing.trainers import TINY_AE
from train import autoencoder as trainer
from train.data import CropBatches, ImageSet, Plan
from train.runtime import TrainError


def _folder(root):
    rng = np.random.default_rng(0)
    (root / "a" / "b").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(root / "one.png")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(root / "a" / "grey.jpg")
    Image.fromarray(rng.integers(0, 255, (80, 60, 4), dtype=np.uint8), "RGBA").save(root / "a" / "b" / "alpha.webp")
    Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).save(root / "a" / "small.PNG")
    (root / "a" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" + bytes(200))
    good = root / "one.png"
    (root / "a" / "truncated.png").write_bytes(good.read_bytes()[:300])
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"ignored")


def test_folder_is_searched_recursively(tmp_path):
    _folder(tmp_path)
    s = ImageSet.from_folder(tmp_path)
    names = sorted(os.path.relpath(p, tmp_path) for p in s.items)
    assert names == ["a/b/alpha.webp", "a/b/broken.jpg", "a/grey.jpg", "a/small.PNG", "a/truncated.png", "one.png"]
    img = s.load(s.items.index(str(tmp_path / "a" / "grey.jpg")))
    assert img.shape == (3, 64, 64) and img.dtype == torch.uint8 and torch.equal(img[0], img[1])


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _folder(data)
    out = tmp_path / "m.safetensors"
    # 6 files, 5 steps x 4 crops: every file is drawn at least once
    assert trainer.main(TINY_AE + ["--steps", "5", "--crop", "32", "--data", str(data), "--out", str(out),
                                "--workers", "0"]) == 0
    with open(tmp_path / "m.train" / "metrics.jsonl") as fh:
        rows = [r for r in map(json.loads, fh) if "loss" in r]
    assert rows[-1]["skipped_files"] == 2
    info = scg_models.load_autoencoder(out).config.info
    assert info["skipped_files"] == 2 and str(data) in info["data"]


def test_corrupt_images_are_counted_with_loader_workers(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _folder(data)
    out = tmp_path / "m.safetensors"
    assert trainer.main(TINY_AE + ["--steps", "5", "--crop", "32", "--data", str(data), "--out", str(out),
                                "--workers", "1"]) == 0
    assert scg_models.load_autoencoder(out).config.info["skipped_files"] == 2


def test_an_empty_folder_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(TrainError, match="no image files in it"):
        trainer.train(TINY_AE + ["--steps", "1", "--data", str(tmp_path), "--out", str(tmp_path / "m.safetensors")])


def test_the_plan_is_a_function_of_seed_and_step_and_splits_over_ranks(tmp_path):
    _folder(tmp_path)
    s = ImageSet.from_folder(tmp_path)
    plan = Plan(len(s), 4, seed=3, max_translate=0.3, max_rotate=180)
    one = CropBatches(s, plan, 16)
    again = CropBatches(ImageSet.from_folder(tmp_path), Plan(len(s), 4, 3, 0.3, 180), 16)
    halves = [CropBatches(s, plan, 16, rank=r, world_size=2) for r in (0, 1)]
    for step in (0, 7):
        x = one[step]["images"]
        assert torch.equal(x, again[step]["images"])
        assert torch.equal(x, torch.cat([h[step]["images"] for h in halves]))
        A = one.transforms(step)["rot"][0]
        assert torch.equal(A, torch.cat([h.transforms(step)["rot"][0] for h in halves]))
    assert not torch.equal(one[0]["images"], one[1]["images"])
    # every image once per epoch
    seen = np.concatenate([plan.step(k).images for k in range(3)])[:6]
    assert sorted(seen.tolist()) == list(range(6))

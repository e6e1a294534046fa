"""Training data: captions (.txt, COCO JSON), unreadable files skipped and counted, the sample
order, image preparation as at inference, the latent/text cache."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scg_testing.trainers import controlnet_args, make_images, run_controlnet


def test_captions_from_same_named_txt(tmp_path):
    from train.cn_data import scan

    make_images(tmp_path, 4)
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (30, 30), "red").save(tmp_path / "sub" / "red.webp")
    (tmp_path / "sub" / "red.txt").write_text("  a red\nsquare ")
    idx = scan(tmp_path)
    assert idx.paths == ["img0.jpg", "img1.png", "img2.jpg", "img3.png", "sub/red.webp"]
    assert idx.captions == ["a pattern number 0 (stripes)", "", "a pattern number 2 (stripes)", "", "a red square"]
    assert idx.captioned == 3 and idx.skipped == {} and "txt" in idx.caption_source


def test_captions_from_coco_json(tmp_path):
    from train.cn_data import scan

    make_images(tmp_path, 3, captions=False)
    coco = {"images": [{"id": 7, "file_name": "img0.jpg"}, {"id": 9, "file_name": "img2.jpg"},
                       {"id": 11, "file_name": "missing.jpg"}],
            "annotations": [{"image_id": 9, "id": 1, "caption": "Second  image,\nfirst caption"},
                            {"image_id": 7, "id": 2, "caption": "first image"},
                            {"image_id": 9, "id": 3, "caption": "second caption (unused)"},
                            {"image_id": 11, "id": 4, "caption": "no file"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    idx = scan(tmp_path, tmp_path / "captions.json")
    assert idx.captions == ["first image", "", "Second image, first caption"]  # img1: no caption -> empty prompt
    (tmp_path / "bad.json").write_text('{"images": []}')
    from scg_models import SCGError

    with pytest.raises(SCGError, match="not a COCO-style captions JSON"):
        scan(tmp_path, tmp_path / "bad.json")


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    from train.cn_data import TrainSet, collate, scan
    from train.runtime import EpochOrder

    make_images(tmp_path, 4)
    (tmp_path / "garbage.png").write_bytes(b"this is not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    good = (tmp_path / "img1.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 3])  # header fine, pixels cut off
    idx = scan(tmp_path)
    assert idx.skipped == {"empty.jpg": "undecodable", "garbage.png": "undecodable"}  # caught by the header scan
    assert "truncated.png" in idx.paths
    usable = list(range(len(idx)))
    ds = TrainSet(idx, usable, 32)
    t = idx.paths.index("truncated.png")
    batch = collate([ds[(0, t)], ds[(1, 0)]])
    assert batch["skipped"] == [("truncated.png", "undecodable")]  # caught when decoding ...
    assert idx.paths[int(batch["item"][0])] != "truncated.png"  # ... and replaced by the next image
    assert batch["image"].shape == (2, 3, 32, 32)
    assert EpochOrder(len(usable), 0).n == 5


def test_image_preparation_matches_inference(tmp_path):
    """LoadImage's conversion, then the nodes' fit (centre crop + antialiased resize)."""
    from scg_models.imaging import fit
    from train.cn_data import prepare_image

    rgba = np.random.default_rng(0).integers(0, 255, (50, 80, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = prepare_image(tmp_path / "a.png", 32)
    ref = torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    assert torch.equal(x, fit(ref, 32, 32)[0])
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1


def test_sample_order_is_the_same_for_any_process_count():
    from train.cn_data import step_batches
    from train.runtime import EpochOrder

    order = EpochOrder(7, seed=5)
    one = list(step_batches(order, batch=4, world=1, rank=0, start=0, stop=6))
    two = [list(step_batches(order, batch=2, world=2, rank=r, start=0, stop=6)) for r in (0, 1)]
    for k in range(6):
        assert one[k] == two[0][k] + two[1][k]
    resumed = list(step_batches(order, batch=4, world=1, rank=0, start=3, stop=6))
    assert resumed == one[3:]
    for e in range(3):  # every epoch is a permutation
        assert sorted(order.item(e * 7 + i) for i in range(7)) == list(range(7))


@pytest.mark.host
def test_precompute_cache_is_built_once_and_used(files):
    from train import sd15
    from train.cn_data import LatentCache, prepare_image, scan

    out = files["root"] / "pre" / "p.safetensors"
    cache_dir = files["root"] / "pre" / "cache"
    argv = controlnet_args(files, out, "--steps", "2", "--precompute", "--cache-dir", str(cache_dir), "--workers", "1",
                      "--no-gradient-checkpointing")
    s = run_controlnet(argv)
    assert s["done"]
    cache = LatentCache(cache_dir)
    meta = cache.meta()
    assert meta["images"] == 5 and meta["texts"] == 4  # "" + three distinct captions
    idx = scan(files["data"])
    base = sd15.load_base(files["base"])
    lat = sd15.encode_images(base, prepare_image(idx.root / idx.paths[2], 32)[None])[0]
    assert torch.allclose(cache.latent(2), lat, atol=1e-3, rtol=1e-2)
    txt = sd15.encode_text(base, [idx.captions[2]])[0]
    assert torch.allclose(cache.text(cache.text_row(2)), txt, atol=2e-3, rtol=1e-2)
    assert torch.equal(cache.text(0), cache.text(cache.text_row(1)))  # uncaptioned -> the empty prompt row
    mtime = (cache_dir / "latents.npy").stat().st_mtime_ns
    run_controlnet(argv + ["--steps", "3"])  # same data and base: the cache is reused, not rebuilt
    assert (cache_dir / "latents.npy").stat().st_mtime_ns == mtime

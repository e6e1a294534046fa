"""The one image scanner/decoder (scg_models.imaging) and the trainers' file plumbing (train.runtime):
regular files only, loops followed once, bombs refused, decoding by bit depth, temporary names
that no loader lists, stale ones removed."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from scg_models.imaging import ImageFileError, check_image, load_image, scan_images
from scg_testing.data_folders import GREY16, bomb_png, grey16_png, hostile_folder
from scg_testing.trainers import child_env
from train import runtime


def test_scan_lists_regular_files_once_and_counts_the_rest(tmp_path):
    expected = hostile_folder(tmp_path, 3)
    os.symlink("missing.png", tmp_path / "dangling.png")
    os.symlink("self.png", tmp_path / "self.png")  # a link to itself: ELOOP
    paths, skipped = scan_images(tmp_path)
    rel = [os.path.relpath(p, tmp_path) for p in paths]
    assert rel == ["grey16.png", "img0.jpg", "img1.png", "img2.jpg", os.path.join("sub", "bomb.png")]
    # the scan opens nothing: the bomb is listed here and refused when checked or decoded
    assert dict(skipped) == {"not a regular file": expected["not a regular file"], "symlink loop": 2, "unreadable": 1}


def test_scanning_a_folder_with_a_fifo_never_opens_it(tmp_path):
    """A FIFO opened for reading blocks until a writer comes: the scan and the decoder must not open it."""
    os.mkfifo(tmp_path / "pipe.png")
    code = ("import sys; from scg_models.imaging import scan_images, load_image, ImageFileError\n"
            f"print(scan_images({str(tmp_path)!r}))\n"
            "try:\n"
            f"    load_image({str(tmp_path / 'pipe.png')!r})\n"
            "except ImageFileError as e:\n"
            "    print(e.reason)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=child_env())
    assert r.returncode == 0, r.stderr
    assert "'not a regular file': 1" in r.stdout and r.stdout.strip().endswith("not a regular file")


def test_bombs_and_undecodable_files_are_refused_by_reason(tmp_path):
    bomb_png(tmp_path / "bomb.png")
    bomb_png(tmp_path / "mild.png", side=10_000)  # 10^8 pixels: over the limit, under Pillow's hard one
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    for name, reason in (("bomb.png", "decompression bomb"), ("mild.png", "decompression bomb"),
                         ("junk.png", "undecodable")):
        with pytest.raises(ImageFileError) as e:
            check_image(tmp_path / name)
        assert e.value.reason == reason
        with pytest.raises(ImageFileError) as e:
            load_image(tmp_path / name)
        assert e.value.reason == reason


def test_16_bit_png_and_tiff_decode_by_bit_depth(tmp_path):
    grey16_png(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png", np.float32)
    assert x.shape == (40, 52, 3) and np.allclose(x, GREY16 / 65535, atol=1e-7)
    assert (load_image(tmp_path / "g.png") == round(GREY16 / 65535 * 255)).all()  # 117, not a clipped 255
    Image.fromarray(np.full((8, 8), 4000, dtype=np.uint16)).save(tmp_path / "g16.tif")
    assert np.allclose(load_image(tmp_path / "g16.tif", np.float32), 4000 / 65535, atol=1e-7)
    Image.fromarray(np.full((8, 8), 0.25, dtype=np.float32)).save(tmp_path / "f.tif")
    assert np.allclose(load_image(tmp_path / "f.tif", np.float32), 0.25)
    Image.fromarray(np.full((8, 8), 7.5, dtype=np.float32)).save(tmp_path / "hdr.tif")
    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)).save(tmp_path / "i32.tif")
    for name in ("hdr.tif", "i32.tif"):
        with pytest.raises(ImageFileError, match="unsupported pixel format") as e:
            load_image(tmp_path / name)
        assert e.value.reason == "unsupported pixel format"


def test_atomic_write_uses_a_name_no_loader_lists_and_cleans_up(tmp_path):
    seen = []

    def interrupted(tmp):
        seen.append(tmp)
        with open(tmp, "wb") as fh:
            fh.write(b"half a model")
        raise KeyboardInterrupt  # killed midway

    with pytest.raises(KeyboardInterrupt):
        runtime.atomic_write(tmp_path / "m.safetensors", interrupted)
    assert not seen[0].endswith(runtime.MODEL_EXTENSIONS) and seen[0].endswith(".partial")
    assert os.listdir(tmp_path) == []
    runtime.save_torch({"x": torch.ones(2)}, tmp_path / "s.pt")
    assert os.listdir(tmp_path) == ["s.pt"]


def test_stale_partials_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [f".m.safetensors.{dead}.partial", ".tmp-abc123.safetensors", ".tmp-x.pt", ".tmp-old.partial"]
    live = [f".m.safetensors.{os.getpid()}.partial", "keep.safetensors", ".tmp-notes.txt", ".tmp-new.partial"]
    for name in stale + live:
        (tmp_path / name).write_bytes(b"x")
    hour_ago = time.time() - 3600
    os.utime(tmp_path / ".tmp-old.partial", (hour_ago, hour_ago))  # another writer's, untouched for an hour
    removed = runtime.remove_partials(tmp_path)
    assert sorted(os.path.basename(p) for p in removed) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(live)


def test_metrics_log_keeps_each_step_once_after_a_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = runtime.MetricsLog(path, 0)
    for s in range(1, 6):
        log.write({"step": s, "loss": 1.0 / s})
    with open(path, "a") as fh:
        fh.write('{"step": 6, "lo')  # cut off by a kill
    log = runtime.MetricsLog(path, 3)  # resumed from the checkpoint of step 3
    for s in range(4, 7):
        log.write({"step": s, "loss": 1.0 / s})
    assert [r["step"] for r in log.records()] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in runtime.MetricsLog(path, 0).records()] == []  # a fresh run starts empty

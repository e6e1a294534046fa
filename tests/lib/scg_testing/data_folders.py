"""Hostile data folders for the trainers and the image scanner: a FIFO, a symlink loop, a
decompression-bomb PNG, a 16-bit PNG, next to ordinary images (all built here, tiny on disk)."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from scg_testing.trainers import make_images

#: grey level of the 16-bit PNG: 30000/65535, 117 as 8 bits (an 8-bit clip would read 255)
GREY16 = 30000


def bomb_png(path, side: int = 100_000) -> Path:
    """A PNG whose header claims side x side pixels (10^10): a few dozen bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                           + chunk(b"IEND", b""))
    return Path(path)


def grey16_png(path, size=(40, 52), value: int = GREY16) -> Path:
    from PIL import Image

    Image.fromarray(np.full(size, value, dtype=np.uint16)).save(path)
    return Path(path)


def hostile_folder(folder: Path, n_good: int = 5) -> dict[str, int]:
    """``n_good`` ordinary images plus one 16-bit PNG (usable), a FIFO named like an image, a
    symlink back to the folder (a loop) and a bomb PNG. Returns the skips a trainer must count."""
    make_images(folder, n_good)
    grey16_png(folder / "grey16.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "loop")
    bomb_png(folder / "sub" / "bomb.png")
    return {"not a regular file": 1, "symlink loop": 1, "decompression bomb": 1}

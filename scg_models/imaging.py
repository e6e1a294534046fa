"""Image plumbing: image files in (scan a folder, decode a file), and around the hint: channel
fixes and resizing to the generation size.

The tensor functions work on BxCxHxW float tensors in [0, 1] on any device. The file functions
are the one way every tool here reads images (the trainers, ``python -m scg_models extract``):
regular files only (a FIFO, socket or device is never opened), symlink loops followed once,
decompression bombs and undecodable files refused with :class:`ImageFileError`, whose
``reason`` is one of :data:`SKIP_REASONS` (the callers skip and count by it).
"""
from __future__ import annotations

import errno
import os
import stat
import warnings
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SCGError

#: File endings the folder scan picks up (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: Images with more pixels are refused as decompression bombs (Pillow's own default limit).
MAX_IMAGE_PIXELS = 89_478_485

NOT_REGULAR = "not a regular file"
LINK_LOOP = "symlink loop"
UNREADABLE = "unreadable"
BOMB = "decompression bomb"
UNDECODABLE = "undecodable"
UNSUPPORTED = "unsupported pixel format"
#: Why a file is skipped: the keys of the counts :func:`scan_images` returns and of ``ImageFileError.reason``.
SKIP_REASONS = (NOT_REGULAR, LINK_LOOP, UNREADABLE, BOMB, UNDECODABLE, UNSUPPORTED)


class ImageFileError(SCGError):
    """A file that cannot be used as an image; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, path, reason: str, detail: str = ""):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


def scan_images(folder, extensions=IMAGE_EXTENSIONS) -> tuple[list[str], Counter]:
    """The image files under ``folder`` (recursive, sorted), and the counts of entries skipped, by reason.

    Nothing is opened: entries are classified with ``os.stat``. Hidden names (``.x``) are left out.
    Symlinked folders are followed, each real folder once (a loop, or a second link to a folder
    already seen, counts as :data:`LINK_LOOP`). An entry with an image ending that is not a
    regular file (FIFO, socket, device) counts as :data:`NOT_REGULAR`; one whose ``stat``
    fails (a dangling link) as :data:`UNREADABLE`. Paths are ``folder`` joined with the
    relative path; ``Counter`` keys are reasons.
    """
    root = os.fspath(folder)
    try:
        st = os.stat(root)
    except OSError as e:
        raise SCGError(f"{root}: not a folder ({e.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SCGError(f"{root}: not a folder")
    extensions = tuple(e.lower() for e in extensions)
    seen = {(st.st_dev, st.st_ino)}
    paths: list[str] = []
    skipped: Counter = Counter()
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            skipped[UNREADABLE] += 1
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            is_image = entry.name.lower().endswith(extensions)
            try:
                st = os.stat(entry.path)  # follows links; never opens the file
            except OSError as e:
                if e.errno == errno.ELOOP:
                    skipped[LINK_LOOP] += 1
                elif is_image:
                    skipped[UNREADABLE] += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    skipped[LINK_LOOP] += 1
                else:
                    seen.add((st.st_dev, st.st_ino))
                    stack.append(entry.path)
            elif is_image:
                if stat.S_ISREG(st.st_mode):
                    paths.append(entry.path)
                else:
                    skipped[NOT_REGULAR] += 1
    paths.sort(key=lambda p: os.path.relpath(p, root).replace(os.sep, "/"))
    return paths, skipped


def _open_checked(path: str, max_pixels: int):
    """Pillow image of a regular file whose header is sane and not a bomb (not yet decoded)."""
    from PIL import Image

    try:
        st = os.stat(path)
    except OSError as e:
        raise ImageFileError(path, LINK_LOOP if e.errno == errno.ELOOP else UNREADABLE, e.strerror) from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageFileError(path, NOT_REGULAR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageFileError(path, BOMB, str(e)) from None
    except Exception as e:  # any decoder's complaint about the header
        raise ImageFileError(path, UNDECODABLE, f"{type(e).__name__}: {e}") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageFileError(path, BOMB, f"{w}x{h} pixels, more than {max_pixels}")
    if w < 1 or h < 1:
        im.close()
        raise ImageFileError(path, UNDECODABLE, f"empty image {w}x{h}")
    return im


def check_image(path, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Raise :class:`ImageFileError` unless ``path`` is a regular file with a sane image header
    (a cheap check: the pixels are not decoded)."""
    _open_checked(os.fspath(path), max_pixels).close()


def _bits_per_sample(im) -> int:
    if im.format == "PNG":
        return 16  # Pillow's only 32-bit integer mode for PNG holds 16-bit grey
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    return int(bits[0] if isinstance(bits, tuple) else bits) if bits else 32


def _pixels(im, path: str) -> np.ndarray:
    """Pillow image -> HxWx3 float32 in [0, 1] (high bit depths) or uint8 (8-bit modes)."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float32) / 65535.0
    elif im.mode == "I":
        bits = _bits_per_sample(im)
        if bits > 16:
            raise ImageFileError(path, UNSUPPORTED, f"{bits}-bit integer pixels have no known white level")
        a = np.asarray(im).astype(np.float32) / float(2**bits - 1)
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ImageFileError(path, UNSUPPORTED, "floating-point pixels outside [0, 1] (HDR or data, not a photo)")
    else:
        if "A" in im.getbands() or im.mode == "P":
            im = im.convert("RGBA")  # palette transparency resolved, then alpha dropped
        return np.array(im.convert("RGB"), dtype=np.uint8)
    a = np.clip(a, 0.0, 1.0)
    return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a[..., :3]


def load_image(path, dtype=np.uint8, max_pixels: int = MAX_IMAGE_PIXELS, draft: int | None = None) -> np.ndarray:
    """One image file -> HxWx3 RGB array: ``uint8`` in [0, 255] or ``float32`` in [0, 1] (``dtype``).

    EXIF rotation applied; grey repeated to RGB; alpha dropped (not composited). Decoded by bit
    depth: 16-bit files keep their range (``float32`` keeps their precision); 32-bit integer
    pixels and floats outside [0, 1] are refused. ``draft``: a JPEG may decode at a reduced
    size whose shorter side is still at least this (faster). Raises :class:`ImageFileError`.
    """
    path = os.fspath(path)
    with _open_checked(path, max_pixels) as im:
        try:
            if draft and im.format == "JPEG":
                im.draft("RGB", (draft, draft))
            a = _pixels(im, path)
        except ImageFileError:
            raise
        except Exception as e:  # truncated data, a decoder bug: the file is skipped, never the run
            raise ImageFileError(path, UNDECODABLE, f"{type(e).__name__}: {e}") from None
    if np.dtype(dtype) == np.uint8:
        return a if a.dtype == np.uint8 else np.round(a * 255.0).astype(np.uint8)
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def to_rgb(images: torch.Tensor, name: str = "images") -> tuple[torch.Tensor, str | None]:
    """BxCxHxW with C in {1, 3, 4} -> Bx3xHxW, and a note saying what was changed (or None).

    Grey (C=1) is repeated to RGB; the alpha of RGBA (C=4) is dropped, not composited.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise SCGError(f"{name}: expected BxCxHxW, got {shape}")
    c = images.shape[1]
    if c == 3:
        return images, None
    if c == 1:
        return images.expand(-1, 3, -1, -1), f"{name}: grey image (1 channel) repeated to RGB"
    if c == 4:
        return images[:, :3], f"{name}: RGBA image, alpha channel dropped"
    raise SCGError(f"{name}: expected 1, 3 or 4 channels (grey, RGB, RGBA), got {c}")


def center_crop_box(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the centred crop of an HxW image with the aspect ratio of the target.

    The same rounding as ComfyUI's ``common_upscale(..., crop="center")``, so a hint
    made here covers the same part of the image as a core ControlNet's hint.
    """
    old, new = width / height, target_w / target_h
    x = y = 0
    if old > new:
        x = round((width - width * (new / old)) / 2)
    elif old < new:
        y = round((height - height * (old / new)) / 2)
    return y, x, height - 2 * y, width - 2 * x


def fit(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop BxCxHxW to the aspect ratio of heightxwidth, then resize to exactly that.

    Bilinear with antialiasing (no ringing, no aliasing when shrinking; values stay in
    the input's range up to rounding). Returns the input itself when it already has that size.
    """
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    if height < 1 or width < 1:
        raise SCGError(f"fit: target size must be positive, got {height}x{width}")
    top, left, ch, cw = center_crop_box(h, w, height, width)
    x = images[..., top:top + ch, left:left + cw]
    if (ch, cw) == (height, width):
        return x
    dtype = x.dtype
    if x.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # antialiased interpolation has no half-precision CPU kernel
    out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.to(dtype)


__all__ = ["IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "SKIP_REASONS", "ImageFileError", "center_crop_box", "check_image",
           "fit", "load_image", "scan_images", "to_rgb"]

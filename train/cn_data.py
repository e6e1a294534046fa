"""Training data for the ControlNet trainer: images, captions, the step-exact sample order and
the on-disk cache of latents and text embeddings (``--precompute``).

Layout a user brings (``--data DIR``): image files anywhere under DIR, each optionally with a
same-named ``.txt`` caption next to it (``cat.jpg`` + ``cat.txt``: the LoRA-set convention),
or a COCO-style captions JSON (``--captions captions_train2017.json``: ``images[].file_name``
relative to DIR, ``annotations[].caption``; the first caption of an image is used, as the
authors did). An image without a caption trains with the empty prompt. Files that cannot be
used as images (not regular files, decompression bombs, undecodable) are skipped and counted by
reason (at the scan, and again if decoding fails later), as :mod:`scg_models.imaging` says.

Images are prepared exactly as ComfyUI's ``LoadImage`` plus SCG's ``fit`` prepare a hint image at
inference: EXIF rotation, RGB (alpha dropped), float in [0, 1], centre crop to a square, then
an antialiased resize to the training resolution.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scg_models import imaging
from scg_models.imaging import ImageFileError, check_image, fit, scan_images

from .loop import progress
from .runtime import Dist, EpochOrder, StepSampler, TrainError, atomic_write

CACHE_VERSION = 1


@dataclass
class ImageIndex:
    """The images found under ``root`` (sorted relative paths), their captions, and what was skipped."""

    root: Path
    paths: list[str]
    captions: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # relative path -> reason (scg_models.imaging)
    scan_skipped: dict[str, int] = field(default_factory=dict)  # reason -> count of entries that are no files
    caption_source: str = "none"
    captioned: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """Changes when the image list or a caption changes (resume and cache checks)."""
        h = hashlib.sha256()
        for p, c in zip(self.paths, self.captions):
            h.update(p.encode() + b"\0" + c.encode() + b"\n")
        return h.hexdigest()[:16]


def _coco_captions(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {img["id"]: img["file_name"] for img in data["images"]}
        out: dict[str, str] = {}
        for ann in data["annotations"]:
            name = files.get(ann["image_id"])
            if name is not None and name not in out and str(ann.get("caption", "")).strip():
                out[name] = " ".join(str(ann["caption"]).split())
        return out
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrainError(f"--captions: {path} is not a COCO-style captions JSON "
                       f"(images[].id/file_name, annotations[].image_id/caption): {e}") from None


def _check(path: Path) -> str | None:
    try:
        check_image(path)
    except ImageFileError as e:
        return e.reason
    return None


def scan(root, captions_json=None, check: bool = True, threads: int = 8) -> ImageIndex:
    """Find the images under ``root`` and their captions; with ``check``, open every file's header
    and skip (and count) the ones that are not readable images."""
    root = Path(root)
    if not root.is_dir():
        raise TrainError(f"--data: {root} is not a folder of images")
    found, scan_skipped = scan_images(root)
    paths = [Path(p).relative_to(root).as_posix() for p in found]
    skipped: dict[str, str] = {}
    if check and paths:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for rel, err in zip(paths, pool.map(_check, (root / p for p in paths))):
                if err:
                    skipped[rel] = err
        paths = [p for p in paths if p not in skipped]
    if captions_json:
        coco = _coco_captions(Path(captions_json))
        caps = [coco.get(p, coco.get(Path(p).name, "")) for p in paths]
        source = f"COCO JSON {Path(captions_json).name}"
    else:
        caps = []
        for p in paths:
            txt = (root / p).with_suffix(".txt")
            try:
                caps.append(" ".join(txt.read_text(encoding="utf-8", errors="replace").split()) if txt.is_file()
                            else "")
            except OSError:
                caps.append("")
        source = "same-named .txt files"
    if not paths:
        raise TrainError(f"--data: no readable images under {root} (png/jpg/jpeg/webp/bmp/tif/tiff"
                         + (f"; {len(skipped) + sum(scan_skipped.values())} skipped" if skipped or scan_skipped
                            else "") + ")")
    return ImageIndex(root, paths, caps, skipped, dict(scan_skipped), source, sum(1 for c in caps if c))


def prepare_image(path, resolution: int) -> torch.Tensor:
    """One image file -> 3xRxR float32 in [0, 1], prepared as at inference (see the module doc).
    Raises :class:`scg_models.imaging.ImageFileError` for a file that cannot be used."""
    x = torch.from_numpy(imaging.load_image(path, np.float32)).permute(2, 0, 1)
    return fit(x[None], resolution, resolution)[0].contiguous()


#: the name ``train.evaluate`` calls it by
load_image = prepare_image


# --- the sample order: a pure function of (seed, position) ---------------------------------
def step_batches(order: EpochOrder, batch: int, world: int, rank: int, start: int, stop: int) -> StepSampler:
    """Micro-batches ``start .. stop-1`` of this rank as lists of ``(position, image)``.

    Position ``p`` of micro-batch ``k`` on rank ``r`` is ``k*B*W + r*B + j``, so one process with
    batch B*W sees exactly the samples of W processes with batch B, and a resumed run continues
    the same stream (which image a position holds: ``order``)."""
    def positions(k: int) -> list[tuple[int, int]]:
        first = (k * world + rank) * batch
        return [(p, order.item(p)) for p in range(first, first + batch)]

    return StepSampler(start, stop, positions)


# --- the cache of latents and text embeddings ---------------------------------------------
class LatentCache:
    """``latents.npy`` (Nx4xhxw fp16, one row per image of the index), ``text.npy`` (Ux77xC fp16,
    one row per distinct caption; row 0 is the empty prompt), ``text_row.npy`` (N int32),
    ``ok.npy`` (N uint8: 0 = the image could not be decoded), ``meta.json`` (written last: the
    cache is complete only when it exists)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self._arrays: dict[str, np.ndarray] = {}

    # reading (also inside DataLoader workers: memmaps open lazily, per process)
    def _array(self, name: str, mode: str = "r") -> np.ndarray:
        key = name + mode
        if key not in self._arrays:
            self._arrays[key] = np.load(self.folder / f"{name}.npy", mmap_mode=mode)
        return self._arrays[key]

    def __getstate__(self):
        return {"folder": self.folder, "_arrays": {}}

    def meta(self) -> dict | None:
        try:
            return json.loads((self.folder / "meta.json").read_text())
        except (OSError, ValueError):
            return None

    def latent(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._array("latents")[i], dtype=np.float32))

    def text(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._array("text")[row], dtype=np.float32))

    def text_row(self, i: int) -> int:
        return int(self._array("text_row")[i])

    def ok(self) -> np.ndarray:
        return np.array(self._array("ok"))

    # writing
    def create(self, n: int, latent_shape: tuple, n_text: int, text_shape: tuple) -> None:
        from numpy.lib.format import open_memmap

        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "meta.json").unlink(missing_ok=True)
        open_memmap(self.folder / "latents.npy", "w+", np.float16, (n, *latent_shape)).flush()
        open_memmap(self.folder / "text.npy", "w+", np.float16, (n_text, *text_shape)).flush()
        open_memmap(self.folder / "text_row.npy", "w+", np.int32, (n,)).flush()
        open_memmap(self.folder / "ok.npy", "w+", np.uint8, (n,)).flush()

    def write(self, name: str, rows, values) -> None:
        arr = self._array(name, "r+")
        arr[rows] = values
        arr.flush()

    def finish(self, meta: dict) -> None:
        self._arrays.clear()
        atomic_write(self.folder / "meta.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))


# --- precompute: the cache filled once ---------------------------------------------------
class _Decode(torch.utils.data.Dataset):
    """Images ``items`` of the index as (i, 3xRxR or None, reason) for the precompute pass."""

    def __init__(self, index, items, resolution):
        self.index, self.items, self.resolution = index, items, resolution

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        i = self.items[k]
        try:
            return i, prepare_image(self.index.root / self.index.paths[i], self.resolution), ""
        except ImageFileError as e:
            return i, None, e.reason


def precompute(base, index, resolution: int, folder: str, key: dict, dist: Dist, batch: int, workers: int):
    """Encode every image's latent and every distinct caption's embedding once (all ranks share
    the work); reuse the cache when its key matches. Returns (cache, {path: reason} of failures)."""
    from . import sd15

    cache = LatentCache(folder)
    meta = cache.meta()
    if meta is not None and meta.get("key") == key:
        ok = cache.ok()
        return cache, {index.paths[i]: "undecodable" for i in np.flatnonzero(ok == 0)}
    texts = [""] + sorted(set(index.captions) - {""})
    row = {c: r for r, c in enumerate(texts)}
    f = int(base.vae.spacial_compression_encode())  # 8 for SD1.5
    if dist.is_main:
        cache.create(len(index), (4, resolution // f, resolution // f), len(texts), (77, base.context_dim))
        cache.write("text_row", slice(None), np.array([row[c] for c in index.captions], dtype=np.int32))
    dist.barrier()
    mine = list(range(dist.rank, len(texts), dist.world_size))
    for s in range(0, len(mine), 64):
        rows = mine[s:s + 64]
        cache.write("text", rows, sd15.encode_text(base, [texts[r] for r in rows]).numpy().astype(np.float16))
    items = list(range(dist.rank, len(index), dist.world_size))
    loader = torch.utils.data.DataLoader(_Decode(index, items, resolution), batch_size=batch, num_workers=workers,
                                         collate_fn=list)
    failed = {}
    for chunk in progress(loader, total=len(loader), desc="precompute", unit="batch", enabled=dist.is_main):
        good = [(i, x) for i, x, _ in chunk if x is not None]
        for i, _, err in chunk:
            if err:
                failed[index.paths[i]] = err
        cache.write("ok", [i for i, _, _ in chunk], np.array([x is not None for _, x, _ in chunk], dtype=np.uint8))
        if good:
            lat = sd15.encode_images(base, torch.stack([x for _, x in good]))
            cache.write("latents", [i for i, _ in good], lat.numpy().astype(np.float16))
    failed = dist.merge(failed)
    dist.barrier()
    if dist.is_main:
        cache.finish({"key": key, "version": 1, "images": len(index), "texts": len(texts)})
    dist.barrier()
    return cache, failed


# --- the torch Dataset ---------------------------------------------------------------------
class TrainSet(torch.utils.data.Dataset):
    """Samples ``(position, i)`` -> dict with the image (3xRxR), caption, cache rows.

    ``usable`` maps the order's indices to image ids. An image that fails to decode is replaced
    by the next usable one (deterministically, so resumed runs match) and reported in
    ``skipped`` for counting.
    """

    def __init__(self, index: ImageIndex, usable: list[int], resolution: int, cache: LatentCache | None = None):
        self.index, self.usable, self.resolution, self.cache = index, list(usable), int(resolution), cache

    def __len__(self) -> int:
        return len(self.usable)

    def __getitem__(self, key):
        position, i = key
        skipped = []
        for attempt in range(min(len(self.usable), 16)):
            item = self.usable[(i + attempt) % len(self.usable)]
            rel = self.index.paths[item]
            try:
                image = prepare_image(self.index.root / rel, self.resolution)
            except ImageFileError as e:  # corrupt data: skip, count, carry on
                skipped.append((rel, e.reason))
                continue
            out = {"position": position, "item": item, "image": image, "caption": self.index.captions[item],
                   "skipped": skipped}
            if self.cache is not None:
                out["latent"] = self.cache.latent(item)
                out["text"] = self.cache.text(self.cache.text_row(item))
            return out
        raise TrainError(f"--data: {len(skipped)} images in a row could not be decoded (last: {skipped[-1][0]}: "
                       f"{skipped[-1][1]})")


def collate(samples: list[dict]) -> dict:
    """Samples of a :class:`TrainSet` -> one batch: ``image`` Bx3xRxR in [0, 1] (the target: the
    latent the UNet denoises is its latent), ``position``, ``item`` (tensors of B), ``caption`` (B
    strings), ``skipped`` (every sample's, flattened), and with a cache ``latent``/``text``. Any
    other field a data set adds comes through the same way: tensors stacked, numbers as a tensor,
    the rest as a list (a paired data set's hint-source image, say: what the ControlNet receives for a
    batch is :meth:`train.cn_step.Trainer.input_of`)."""
    out: dict = {}
    for key, first in samples[0].items():
        values = [s[key] for s in samples]
        if key == "skipped":
            out[key] = [x for v in values for x in v]
        elif isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, (int, float)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


__all__ = ["CACHE_VERSION", "ImageIndex", "LatentCache", "TrainSet", "collate", "load_image", "precompute", "prepare_image", "scan",
           "step_batches"]

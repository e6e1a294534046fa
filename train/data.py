"""Training images of the autoencoder: a folder searched recursively
(:func:`scg_models.imaging.scan_images`) or the photographs that scikit-image ships in its
package; random crops in an order that is a pure function of (seed, step), so a resumed or
multi-process run sees exactly the same batches.

A file that cannot be used (a decompression bomb, undecodable, an unsupported pixel format) is
skipped (the next image takes its place), reported once and counted by reason; it never stops a run.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from scg_models.imaging import ImageFileError, load_image, scan_images

from .runtime import EpochOrder, TrainError

log = logging.getLogger("scg.train")

#: The photographs in ``skimage.data`` that live inside the package (no download):
#: natural and scientific photographs; the synthetic ones (checkerboards, logo, phantom,
#: text renderings, silhouettes) are left out.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock_motion", "coffee", "coins",
                  "grass", "gravel", "hubble_deep_field", "ihc", "moon", "motorcycle_left",
                  "motorcycle_right", "retina", "rocket")


class ImageSet:
    """An indexable set of RGB images, decoded on demand into a small LRU cache.

    ``items``: file paths, or ``(name, loader)`` pairs where ``loader()`` returns HxWx3 uint8.
    ``resize``: images whose shorter side exceeds it are scaled down to it (0: never).
    """

    def __init__(self, items: list, description: str, resize: int = 512, cache_mb: float = 1024):
        if not items:
            raise TrainError(f"{description}: no images found")
        self.items, self.description, self.resize = list(items), description, int(resize)
        self.scan_skipped: dict[str, int] = {}  # reason -> count of folder entries that are no image files
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cached = 0
        self.bad: dict[int, str] = {}  # index -> reason (this process)

    @classmethod
    def from_folder(cls, root: str, **kw) -> ImageSet:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise TrainError(f"--data {root}: not a folder")
        paths, skipped = scan_images(root)
        if not paths:
            raise TrainError(f"--data {root}: no image files in it or its sub-folders (looked for "
                             "png/jpg/jpeg/webp/bmp/tif/tiff)")
        images = cls(paths, f"{root} ({len(paths)} files)", **kw)
        images.scan_skipped = dict(skipped)
        return images

    @classmethod
    def from_skimage(cls, **kw) -> ImageSet:
        try:
            import skimage.data as skd
        except ImportError:
            raise TrainError("no --data given and scikit-image is not installed; `pip install scikit-image` "
                            "for the embedded default photographs, or pass --data FOLDER") from None
        names = ", ".join(SKIMAGE_PHOTOS)
        return cls([_skimage_path(skd, n) or (n, getattr(skd, n)) for n in SKIMAGE_PHOTOS],
                   f"scikit-image {_skimage_version()} photographs ({len(SKIMAGE_PHOTOS)}: {names})", **kw)

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        it = self.items[i]
        return it if isinstance(it, str) else f"skimage.data.{it[0]}"

    def _decode(self, i: int) -> torch.Tensor:
        it = self.items[i]
        if isinstance(it, str):
            a = load_image(it, np.uint8, draft=self.resize or None)
        else:
            a = np.asarray(it[1]())
            if a.ndim == 2:
                a = np.repeat(a[..., None], 3, -1)
            a = np.array(a[..., :3], dtype=np.uint8)
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous()
        if self.resize and min(t.shape[1:]) > self.resize:
            t = _resize(t, self.resize / min(t.shape[1:]))
        return t

    def load(self, i: int) -> torch.Tensor:
        """Image i as 3xHxW uint8; raises :class:`ImageFileError` on a file that cannot be used."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        t = self._decode(i)
        self._cache[i] = t
        self._cached += t.numel()
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.numel()
        return t

    def load_good(self, i: int) -> tuple[int, torch.Tensor]:
        """Image i, or the next decodable one (skipping and recording corrupt files)."""
        n = len(self.items)
        for k in range(n):
            j = (i + k) % n
            if j in self.bad:
                continue
            try:
                return j, self.load(j)
            except ImageFileError as e:  # skip the file, never the run
                self.bad[j] = e.reason
                log.warning("skipping image: %s", e)
        raise TrainError(f"{self.description}: none of the {n} images could be read")


def _skimage_path(skd, name: str) -> str | None:
    p = os.path.join(skd.data_dir, f"{name}.png")
    if os.path.exists(p):
        return p
    p = os.path.join(skd.data_dir, f"{name}.jpg")
    return p if os.path.exists(p) else None


def _skimage_version() -> str:
    import skimage

    return skimage.__version__


def _resize(t: torch.Tensor, scale: float) -> torch.Tensor:
    h, w = t.shape[1:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    y = torch.nn.functional.interpolate(t[None].float(), size=size, mode="bilinear", antialias=scale < 1,
                                        align_corners=False)
    return y[0].round().clamp(0, 255).to(torch.uint8)


@dataclass
class StepPlan:
    """What one global batch of a step is made of; identical on every rank."""

    images: np.ndarray   # B image indices (before skipping corrupt files)
    crop_u: np.ndarray   # Bx2 uniforms -> crop corner (y, x)
    angle: dict          # pass -> B angles (degrees)
    shift: dict          # pass -> Bx2 shifts (fraction of the half side, x, y)


class Plan:
    """The deterministic schedule: epoch-wise shuffled image order, crop corners and transforms.

    Everything for step ``s`` comes from ``numpy.random.default_rng([seed, s, ...])``: a run
    resumed at step s, or split over any number of processes, sees the same batches.
    """

    def __init__(self, n_images: int, batch_size: int, seed: int, max_translate: float, max_rotate: float):
        self.n, self.batch, self.seed = n_images, batch_size, int(seed)
        self.max_translate, self.max_rotate = float(max_translate), float(max_rotate)
        self.order = EpochOrder(n_images, seed)

    def step(self, s: int) -> StepPlan:
        images = np.array([self.order.item(s * self.batch + j) for j in range(self.batch)])
        rng = np.random.default_rng([self.seed, 2, s])
        crop_u = rng.random((self.batch, 2))
        angle, shift = {}, {}
        for name in ("trans", "rot"):
            a = rng.uniform(-self.max_rotate, self.max_rotate, self.batch)
            angle[name] = a if name == "rot" else np.zeros(self.batch)
            shift[name] = rng.uniform(-self.max_translate, self.max_translate, (self.batch, 2))
        return StepPlan(images, crop_u, angle, shift)


class CropBatches(torch.utils.data.Dataset):
    """Dataset indexed by step: item s is this rank's slice of step s's global batch.

    Returns ``{"images": bx3xcropxcrop float in [0, 1], "step": s, "bad": {index: reason}}``
    (``bad``: corrupt files this worker has found so far, for the trainer's count).
    """

    def __init__(self, images: ImageSet, plan: Plan, crop: int, rank: int = 0, world_size: int = 1):
        if plan.batch % world_size:
            raise ValueError(f"--batch-size {plan.batch} is not divisible by the {world_size} processes")
        self.images, self.plan, self.crop = images, plan, int(crop)
        self.lo = rank * plan.batch // world_size
        self.hi = (rank + 1) * plan.batch // world_size

    def __len__(self) -> int:  # indexed by step; the sampler bounds it
        return 2**62

    def crop_of(self, index: int, u: np.ndarray) -> torch.Tensor:
        _, img = self.images.load_good(int(index))
        c = self.crop
        if min(img.shape[1:]) < c:
            img = _resize(img, c / min(img.shape[1:]))
        h, w = img.shape[1:]
        y0 = min(int(u[0] * (h - c + 1)), h - c)
        x0 = min(int(u[1] * (w - c + 1)), w - c)
        return img[:, y0:y0 + c, x0:x0 + c]

    def __getitem__(self, s: int) -> dict:
        p = self.plan.step(int(s))
        crops = [self.crop_of(p.images[j], p.crop_u[j]) for j in range(self.lo, self.hi)]
        x = torch.stack(crops).float().div_(255)
        return {"images": x, "step": int(s), "bad": dict(self.images.bad)}

    def transforms(self, s: int, device=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """This rank's transforms of step s: pass -> (Bx2x3 affine maps, B angles in radians)."""
        from .losses import affine_matrices

        p = self.plan.step(int(s))
        out = {}
        for name in ("trans", "rot"):
            ang = torch.tensor(p.angle[name][self.lo:self.hi], dtype=torch.float32)
            sh = torch.tensor(p.shift[name][self.lo:self.hi], dtype=torch.float32) * (self.crop / 2)
            A = affine_matrices(ang, sh, self.crop)
            out[name] = (A.to(device), torch.deg2rad(ang).to(device))
        return out

"""Image-similarity metrics of the paper's Table 1, in pure torch, plus optional FID and CLIP.

Conventions (``python -m train.evaluate`` and docs/evaluation.md):

* Images are float tensors B x 3 x H x W with values in [0, 1]; ``data_range`` is 1.0 (fixed,
  not inferred from the data).
* Grey is ITU-R BT.601 luma, ``Y = 0.299 R + 0.587 G + 0.114 B``: what PIL's ``convert("L")``
  computes, which is how the authors made their grey images.
* PSNR and SSIM are computed per image and averaged over images by the caller. PSNR of two
  identical images is ``inf``.
* SSIM: Gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03; the image is reflect-padded by 5
  pixels so the SSIM map covers every pixel; the map is averaged over channels and pixels. This
  is torchmetrics' ``StructuralSimilarityIndexMeasure`` (which the authors used) with these
  settings and a fixed data range.
* FID: the Frechet distance between Gaussian fits of Inception-v3 pool features (2048-d) of two
  image sets. The feature extractor is torch-fidelity's Inception (through torchmetrics) with the
  weights file ``weights-inception-2015-12-05-6726825d.pth`` found on disk; nothing is downloaded.
* CLIP: the authors' image-image similarity: ``(cos(CLIP(a), CLIP(b)) + 1) / 2`` of the image
  embeddings of a generated image and its reference, with a CLIP model from a local folder.

When FID or CLIP cannot run (missing package or weights), :class:`MetricUnavailable` says why.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from scg_models.errors import SCGError

#: ITU-R BT.601 luma weights (R, G, B), as PIL's ``convert("L")``.
BT601 = (0.299, 0.587, 0.114)
#: OpenAI CLIP's input normalisation.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: torch-fidelity's Inception weights as torch.hub caches them (weights-inception-2015-12-05-6726825d.pth).
FID_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_GLOB = "*inception-2015-12-05*.pth"


class MetricUnavailable(SCGError):
    """FID or CLIP cannot be computed here (a package or a weights file is missing)."""


# --- PSNR and SSIM ------------------------------------------------------------------------
def to_grey(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W in [0, 1] -> B x 1 x H x W BT.601 luma in [0, 1]."""
    w = torch.tensor(BT601, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True)


def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise SCGError(f"{name}: expected two B x C x H x W tensors of the same shape, got "
                       f"{tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image pair.

    x, y: B x C x H x W (any C), values in [0, data_range]. Returns B values (float64);
    ``10 log10(data_range^2 / MSE)``, ``inf`` where the images are identical.
    """
    _check_pair(x, y, "psnr")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def gaussian_window(kernel_size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``kernel_size`` taps centred on the middle one."""
    d = torch.arange(kernel_size, dtype=dtype) - (kernel_size - 1) / 2
    g = torch.exp(-(d ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, kernel_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity of each image pair (Wang et al. 2004, Gaussian window).

    x, y: B x C x H x W (any C), values in [0, data_range], H and W at least ``kernel_size``.
    Returns B values (float64): the SSIM map (reflect padding, one value per pixel), averaged
    over channels and pixels. Local variances are clamped at 0 against rounding.
    """
    _check_pair(x, y, "ssim")
    if min(x.shape[-2:]) < kernel_size:
        raise SCGError(f"ssim: images of {x.shape[-2]} x {x.shape[-1]} are smaller than the "
                       f"{kernel_size} x {kernel_size} window")
    c = x.shape[1]
    g = gaussian_window(kernel_size, sigma).to(x.device)
    win_h = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    win_w = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    pad = (kernel_size - 1) // 2

    def blur(t):
        return F.conv2d(F.conv2d(t, win_h, groups=c), win_w, groups=c)

    x = F.pad(x.double(), (pad,) * 4, mode="reflect")
    y = F.pad(y.double(), (pad,) * 4, mode="reflect")
    mu_x, mu_y = blur(x), blur(y)
    var_x = (blur(x * x) - mu_x ** 2).clamp(min=0)
    var_y = (blur(y * y) - mu_y ** 2).clamp(min=0)
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(dim=1)


def similarity(generated: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """Table 1's four similarity columns for each pair: ``psnr_grey``, ``psnr_colour``,
    ``ssim_grey``, ``ssim_colour`` (B values each). Inputs: B x 3 x H x W in [0, 1]."""
    g_gen, g_ref = to_grey(generated), to_grey(reference)
    return {"psnr_grey": psnr(g_gen, g_ref), "psnr_colour": psnr(generated, reference),
            "ssim_grey": ssim(g_gen, g_ref), "ssim_colour": ssim(generated, reference)}


# --- Frechet distance -------------------------------------------------------------------
def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N x D features -> (mean D, covariance D x D with the N-1 denominator), float64."""
    f = features.double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise SCGError(f"feature_stats: need N x D features with N >= 2, got {tuple(features.shape)}")
    mu = f.mean(dim=0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Frechet distance of two Gaussians: ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

    The trace of the matrix square root is computed as the sum of the square roots of the
    eigenvalues of ``S1^(1/2) S2 S1^(1/2)`` (symmetric PSD: same eigenvalues as S1 S2), in float64.
    """
    mu1, mu2, s1, s2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_sqrt)


def fid_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID of two sets of features (N x D and M x D)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


# --- FID feature extractor (weights from disk only) --------------------------------------------
def find_fid_weights(explicit: str | os.PathLike | None = None) -> Path | None:
    """The Inception weights file: ``explicit`` if given (must exist), else torch hub's cache
    (``$TORCH_HOME/hub/checkpoints/``: torch-fidelity's file, else another ``*inception-2015-12-05*.pth``),
    else None."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise SCGError(f"--fid-weights: {p} is not a file (torch-fidelity's {FID_WEIGHTS_NAME})")
        return p
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    if (cache / FID_WEIGHTS_NAME).is_file():
        return cache / FID_WEIGHTS_NAME
    found = sorted(glob.glob(str(cache / FID_WEIGHTS_GLOB)))
    return Path(found[0]) if found else None


def check_weights_file(path: str | os.PathLike, option: str) -> None:
    """Refuse a weights file unless it is a plain state dict of finite tensors: unpickled with
    ``weights_only=True`` (nothing in it can run), bounded to what torch's safe unpickler allows."""
    try:
        with open(path, "rb") as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as e:  # the safe unpickler's refusals and corrupt files alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SCGError(f"{option}: {path} is not a plain PyTorch weights file ({first})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SCGError(f"{option}: {path} is not a state dict of tensors")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise SCGError(f"{option}: {path}: weight {bad[0]!r} holds NaN or infinite values")


def _has_torch_fidelity() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch_fidelity") is not None


class InceptionFeatures:
    """Inception-v3 pool features (N x 2048) of images in [0, 1], from a weights file on disk."""

    def __init__(self, weights: str | os.PathLike | None, device="cpu"):
        path = find_fid_weights(weights)
        if path is None:
            raise MetricUnavailable(
                f"FID skipped: no Inception weights on disk (pass --fid-weights PATH to torch-fidelity's "
                f"{FID_WEIGHTS_NAME}, or put it in {torch.hub.get_dir()}/checkpoints/); nothing is downloaded")
        if not _has_torch_fidelity():
            raise MetricUnavailable("FID skipped: torchmetrics' Inception needs the torch-fidelity package "
                                    "(pip install torch-fidelity)")
        check_weights_file(path, "--fid-weights")  # torch-fidelity unpickles it with weights_only=False
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            model = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                       feature_extractor_weights_path=str(path))
        except RuntimeError as e:  # load_state_dict: other key names or shapes
            raise SCGError(f"--fid-weights: {path} does not fit torch-fidelity's Inception (expected "
                           f"{FID_WEIGHTS_NAME}): {str(e).strip().splitlines()[0]}") from None
        self.model = model.eval().requires_grad_(False).to(device)
        self.device, self.path = torch.device(device), path

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [0, 1] -> B x 2048 float64 (the extractor resizes to 299 itself)."""
        x = (images.clamp(0, 1) * 255).round().to(torch.uint8).to(self.device)
        return self.model(x).reshape(len(images), -1).double().cpu()


# --- CLIP image-image similarity (a local model folder only) -----------------------------------
class ClipImages:
    """Image embeddings of a transformers ``CLIPModel`` loaded from a local folder (offline)."""

    def __init__(self, folder: str | os.PathLike | None, device="cpu"):
        if not folder:
            raise MetricUnavailable("CLIP skipped: no --clip-model folder given (a local transformers CLIP "
                                    "model such as openai/clip-vit-base-patch32, saved with save_pretrained); "
                                    "nothing is downloaded")
        if not (Path(folder) / "config.json").is_file():
            raise MetricUnavailable(f"CLIP skipped: {folder} holds no config.json (expected a folder saved with "
                                    "CLIPModel.save_pretrained)")
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            from transformers import CLIPModel
        except ImportError as e:
            raise MetricUnavailable(f"CLIP skipped: the transformers package is missing ({e})") from None
        try:
            model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise MetricUnavailable(f"CLIP skipped: cannot load a CLIPModel from {folder} ({e})") from None
        self.model = model.eval().requires_grad_(False).to(device)
        self.size = int(model.config.vision_config.image_size)
        self.device, self.folder = torch.device(device), str(folder)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [0, 1] -> CLIP input: shorter side resized (bicubic) to the model's
        size, centre crop, CLIP normalisation."""
        h, w = images.shape[-2:]
        s = self.size / min(h, w)
        nh, nw = max(self.size, round(h * s)), max(self.size, round(w * s))
        x = F.interpolate(images.float(), size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size].clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [0, 1] -> B x D unit-length image embeddings (float64, CPU)."""
        out = self.model.get_image_features(pixel_values=self.preprocess(images).to(self.device))
        if not isinstance(out, torch.Tensor):  # some transformers versions return a model output
            out = out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]
        return F.normalize(out.double().cpu(), dim=-1)


def clip_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair ``(cos + 1) / 2`` of two B x D embedding batches, in [0, 1]."""
    return (F.cosine_similarity(a.double(), b.double(), dim=-1) + 1) / 2


__all__ = ["BT601", "ClipImages", "InceptionFeatures", "MetricUnavailable", "check_weights_file", "clip_similarity",
           "feature_stats",
           "fid_from_features", "find_fid_weights", "frechet_distance", "gaussian_window", "psnr", "similarity",
           "ssim", "to_grey"]

"""The paper's evaluation (Table 1) as a tool: ``python -m train.evaluate``.

For every image of a folder and every requested group, generate with SD1.5 and the SCG
ControlNet through ComfyUI's own model classes and sampler, with the authors' settings (DDIM,
50 steps, eta 0, CFG 9.1, empty negative prompt with the same control). Then compare each
generated image with the SD VAE reconstruction of its original, as the authors did: PSNR and
SSIM in grey and colour, plus FID and CLIP image similarity when their weights are on disk.
Outputs in ``--out``: ``results.md`` (the table), ``results.json``, one bar chart per metric
(``chart_<metric>.png``), the generated images (``samples/<group>/``) and the references
(``reference/``). See docs/evaluation.md.

The ControlNet's input is made in one place, :func:`hint_input`: (group selection,
autoencoder, images) -> the hint the ControlNet takes. A ControlNet format that needs another
input (e.g. a presence mask) plugs in there and in :func:`controlnet_kind`.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

import torch

from scg_models.errors import SCGError

from . import metrics

log = logging.getLogger("scg.evaluate")

#: the authors' sampler settings (cldm.py ``log_images``); ComfyUI's "ddim" is DDIM with eta 0, and
#: its "ddim_uniform" schedule takes the same timesteps (1, 21, ..., 981 for 50 steps).
AUTHORS_SAMPLING = {"steps": 50, "cfg": 9.1, "sampler": "ddim", "scheduler": "ddim_uniform"}
NO_CONTROL = "none"
#: metric key -> (column title, unit, higher is better)
COLUMNS = {
    "psnr_grey": ("PSNR grey", "dB", True),
    "psnr_colour": ("PSNR colour", "dB", True),
    "ssim_grey": ("SSIM grey", "", True),
    "ssim_colour": ("SSIM colour", "", True),
    "fid": ("FID", "", False),
    "clip": ("CLIP image", "", True),
}


# --- the ControlNet and its input -----------------------------------------------------------
@dataclasses.dataclass
class Control:
    """One SCG ControlNet file, loaded: ComfyUI's ControlNet, the autoencoder that makes its
    input, and its kind (see :func:`controlnet_kind`)."""

    path: str
    control: object  # comfy.controlnet.ControlNet
    ae: object  # scg_models.ModularAutoencoder, on the compute device
    kind: str
    info: dict


def controlnet_kind(cn, path: str = "ControlNet") -> str:
    """Which input a loaded ControlNet file (:class:`scg_models.formats.ControlNetFile`) takes:
    ``"per_group"`` (the SCG hint of one module selection, 3 channels) or ``"any_subset"`` (the
    hint of any selection plus its presence mask, 3 + n_vector channels; docs/any_subset.md)."""
    from scg_models import formats

    return formats.controlnet_kind(cn, path)


def hint_input(control: Control, selection: str, images: torch.Tensor) -> torch.Tensor:
    """(group selection, autoencoder, images) -> the ControlNet's hint input.

    images: B x 3 x H x W in [0, 1] at the generation size (latent x 8). For a per-group
    ControlNet: ``ae.hint(images, selection)``, B x 3 x h x w, raw (509 x 509 at 512), exactly
    what the authors' ControlNet and this project's trainer and nodes feed the hint block. For an
    any-subset ControlNet: that hint followed by the selection's presence mask, B x (3 + n_vector)
    x h x w (:func:`scg_models.subsets.subset_input`).
    """
    p = next(control.ae.parameters())
    if control.kind == "per_group":
        return control.ae.hint(images.to(p.device), selection)
    if control.kind == "any_subset":  # hint of the selection (gains 1) and its presence mask
        from scg_models.subsets import subset_input

        mods = control.ae.resolve_modules(selection)
        return subset_input(control.ae, images.to(p.device), [mods] * images.shape[0])
    raise SCGError(f"--controlnet: {control.path}: no input is defined for ControlNets of kind {control.kind!r}")


def check_fits(state_dict: dict, base, path: str) -> None:
    """The ControlNet was made for a UNet like the base's (widths, levels, context), or an error."""
    import comfy.model_detection

    cfg = comfy.model_detection.detect_unet_config(state_dict, "") or {}
    want = base.unet_config
    wrong = [f"{k} {cfg.get(k)} (base: {want.get(k)})" for k in ("model_channels", "channel_mult", "context_dim")
             if cfg.get(k) != want.get(k)]
    if wrong:
        raise SCGError(f"--controlnet: {path} does not fit the base checkpoint: " + ", ".join(wrong))


def load_control(path: str, base, autoencoder: str | None, device, dtype) -> Control:
    """A ControlNet file (the authors' .ckpt or our .safetensors) as the Load SCG ControlNet node
    loads it: :func:`scg_models.formats.load_controlnet_file`, then ComfyUI's
    ``load_controlnet_state_dict``. The autoencoder is ``autoencoder`` if given, else the file's."""
    import comfy.controlnet

    from scg_models import formats

    try:
        cn = formats.load_controlnet_file(path)
        ae = formats.load_autoencoder(autoencoder) if autoencoder else cn.autoencoder
    except SCGError as e:
        raise SCGError(f"--controlnet/--autoencoder: {e}") from None
    if ae is None:
        raise SCGError(f"--controlnet: {path} holds no SCG autoencoder; pass --autoencoder PATH (the one it was "
                       "trained with)")
    check_fits(cn.state_dict, base, path)
    try:
        kind = controlnet_kind(cn, path)
    except SCGError as e:
        raise SCGError(f"--controlnet: {e}") from None
    if kind == "any_subset" and ae.n_vector != cn.autoencoder.n_vector:
        raise SCGError(f"--autoencoder: has {ae.n_vector} modules; the any-subset ControlNet {path} was trained "
                       f"for {cn.autoencoder.n_vector}")
    control = comfy.controlnet.load_controlnet_state_dict(dict(cn.state_dict), model_options={"dtype": dtype})
    if control is None:
        raise SCGError(f"--controlnet: ComfyUI could not build a ControlNet from {path}")
    try:
        info = json.loads(cn.metadata.get(formats.CONTROLNET_META_KEY, "{}"))
    except ValueError:
        info = {}
    return Control(path, control, ae.to(device).eval(), kind, info)


# --- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="The SCG paper's evaluation (Table 1): generate with each group's ControlNet, compare with "
                    "the VAE reconstruction of each original (PSNR/SSIM grey and colour; FID and CLIP when their "
                    "weights are on disk). Nothing is downloaded.")
    p.add_argument("--checkpoint", help="SD1.5 checkpoint (UNet, CLIP, VAE in one file)")
    p.add_argument("--controlnet", action="append", default=[], metavar="[GROUP=]PATH",
                   help="SCG ControlNet file (authors' .ckpt or converted .safetensors). PATH: used for every group; "
                        "GROUP=PATH: that group's own ControlNet (per-group files, as in Table 1). Repeatable.")
    p.add_argument("--autoencoder", help="SCG autoencoder file (default: the one stored in each ControlNet file)")
    p.add_argument("--images", help="folder of images; captions in same-named .txt files")
    p.add_argument("--captions", help="COCO-style captions JSON instead of .txt files (first caption per image)")
    p.add_argument("--prompt", help="one prompt for every image (instead of the captions)")
    p.add_argument("--negative", default="", help="negative prompt (default: empty, as the authors)")
    p.add_argument("--groups", default="HC0", help="comma-separated selections to evaluate: group names (HC0), "
                   "unions (HC2+HC3), module lists with ';' (0;1;4), and 'none' for no control (default: HC0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resolution", type=int, default=512, help="generation size (square; default 512)")
    p.add_argument("--fit", choices=["crop", "stretch"], default="crop",
                   help="make each image square: centre crop then resize (as the trainer and nodes do; default) or "
                        "resize without cropping (as the authors prepared COCO)")
    p.add_argument("--steps", type=int, default=AUTHORS_SAMPLING["steps"])
    p.add_argument("--cfg", type=float, default=AUTHORS_SAMPLING["cfg"])
    p.add_argument("--sampler", default=AUTHORS_SAMPLING["sampler"], help="ComfyUI sampler name (default ddim)")
    p.add_argument("--scheduler", default=AUTHORS_SAMPLING["scheduler"],
                   help="ComfyUI scheduler name (default ddim_uniform)")
    p.add_argument("--seed", type=int, default=0, help="image k uses seed + k, the same for every group")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (sorted; 0: all)")
    p.add_argument("--fid-weights", help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (default: look in the "
                   "torch hub cache); FID is skipped without it")
    p.add_argument("--clip-model", help="local folder of a transformers CLIPModel (e.g. clip-vit-base-patch32 "
                   "saved with save_pretrained); CLIP is skipped without it")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="UNet/ControlNet weights (auto: fp16 on CUDA, fp32 on the CPU)")
    p.add_argument("--comfyui", help="ComfyUI checkout (default: $COMFYUI_PATH, the ComfyUI holding this "
                   "extension, ~/comfy/ComfyUI)")
    p.add_argument("--score-folders", nargs="+", metavar=("REFERENCE", "GENERATED"),
                   help="no generation: score folders of images made elsewhere (e.g. the authors' samples) against "
                        "REFERENCE, one row per GENERATED folder, files paired by sorted name")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (same settings): "
                   "images already written are kept")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@dataclasses.dataclass
class Plan:
    """The validated command line."""

    groups: list[str]
    controlnets: dict[str, str]  # group -> path ("" key: the default for every group)
    device: torch.device
    dtype: torch.dtype

    def controlnet_for(self, selection: str) -> str:
        """The ControlNet file of a selection ("" for no control)."""
        if selection == NO_CONTROL:
            return ""
        return self.controlnets.get(selection, self.controlnets.get("", ""))


def _split_controlnet(value: str) -> tuple[str, str]:
    m = re.match(r"^([A-Za-z0-9_+;]+)=(.+)$", value)
    if m and not os.path.exists(value):
        return m.group(1), m.group(2)
    return "", value


def plan(a) -> Plan:
    """Check the command line once; errors name the option."""
    for name in ("checkpoint", "images"):
        if not getattr(a, name):
            raise SCGError(f"--{name} is required (or --score-folders REFERENCE GENERATED... to score existing images)")
    groups = [g.strip() for g in a.groups.split(",") if g.strip()]
    if not groups:
        raise SCGError("--groups: give at least one selection (e.g. HC0,HC1,none)")
    if len(set(groups)) != len(groups):
        raise SCGError(f"--groups: {a.groups!r} names a selection twice")
    controlnets: dict[str, str] = {}
    for value in a.controlnet:
        group, path = _split_controlnet(value)
        if group in controlnets:
            raise SCGError(f"--controlnet: {'group ' + group if group else 'a default file'} is given twice")
        if not os.path.isfile(path):
            raise SCGError(f"--controlnet: {path} not found")
        if group and group not in groups:
            raise SCGError(f"--controlnet: {value!r} is for group {group!r}, which --groups does not list")
        controlnets[group] = path
    for g in groups:
        if g != NO_CONTROL and g not in controlnets and "" not in controlnets:
            raise SCGError(f"--controlnet: no ControlNet for group {g!r}; pass --controlnet PATH or "
                           f"--controlnet {g}=PATH")
    for name in ("checkpoint", "autoencoder", "captions"):
        value = getattr(a, name)
        if value and not os.path.isfile(value):
            raise SCGError(f"--{name}: {value} not found")
    if not os.path.isdir(a.images):
        raise SCGError(f"--images: {a.images} is not a folder")
    if a.resolution < 32 or a.resolution % 8:
        raise SCGError(f"--resolution: {a.resolution} must be a multiple of 8 and at least 32")
    if a.steps < 1 or not math.isfinite(a.cfg) or a.limit < 0:
        raise SCGError("--steps must be >= 1, --cfg finite, --limit >= 0")
    device = device_of(a)
    name = a.dtype if a.dtype != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
    return Plan(groups, controlnets, device, dtype)


# --- data ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Item:
    name: str  # output file name (same in samples/<group>/ and reference/)
    source: str  # the image's path relative to --images
    caption: str
    seed: int


def items(a) -> list[Item]:
    """The images in sorted order, their prompts and seeds."""
    from .cn_data import scan

    index = scan(a.images, a.captions)
    paths, captions = index.paths, index.captions
    if a.limit:
        paths, captions = paths[:a.limit], captions[:a.limit]
    if a.prompt is None:
        missing = [p for p, c in zip(paths, captions) if not c]
        if missing:
            raise SCGError(f"--images: {len(missing)} image(s) have no caption (first: {missing[0]}); add a "
                           "same-named .txt file, pass --captions JSON, or give one --prompt for all")
    else:
        captions = [a.prompt] * len(paths)
    width = max(4, len(str(len(paths))))
    out = []
    for k, (p, c) in enumerate(zip(paths, captions)):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(p).with_suffix("").as_posix())
        out.append(Item(f"{k:0{width}d}-{stem}.png", p, c, a.seed + k))
    return out


def folder_label(selection: str) -> str:
    return re.sub(r"[^A-Za-z0-9+_-]+", "_", selection)


def load_original(path: Path, resolution: int, fit: str) -> torch.Tensor:
    """An image file -> 1 x 3 x R x R in [0, 1]: ``crop`` prepares it as the trainer does (EXIF
    rotation, RGB, centre crop, antialiased resize); ``stretch`` resizes the whole image to R x R."""
    from .cn_data import load_image

    if fit == "crop":
        return load_image(path, resolution)[None]
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        arr = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                           antialias=True).clamp(0, 1)


def save_png(image: torch.Tensor, path: Path) -> None:
    """3 x H x W in [0, 1] -> 8-bit RGB PNG."""
    import numpy as np
    from PIL import Image

    arr = (image.clamp(0, 1).movedim(0, -1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)  # an interrupted run never leaves a half-written image for --resume


def read_png(path: Path) -> torch.Tensor:
    """An image file -> 3 x H x W float64 in [0, 1] (exact for 8-bit files)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).double() / 255


# --- generation ----------------------------------------------------------------------------------
@torch.no_grad()
def reconstruct(base, images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W in [0, 1] -> the SD VAE's encode-decode, B x 3 x H x W in [0, 1] (CPU)."""
    raw = base.vae.encode(images.movedim(1, -1).float().cpu())
    return base.vae.decode(raw).float().cpu().clamp(0, 1).movedim(-1, 1)


@torch.no_grad()
def generate(base, control: Control | None, selection: str, image: torch.Tensor, context: torch.Tensor,
             uncond: torch.Tensor, seed: int, a) -> torch.Tensor:
    """One image with ComfyUI's sampler (``nodes.common_ksampler``'s steps), the control attached
    to both the positive and the negative conditioning as core's Apply ControlNet does.

    image: 1 x 3 x R x R in [0, 1] (the original at the generation size); context/uncond:
    1 x 77 x C. Returns 3 x R x R in [0, 1] (CPU).
    """
    import comfy.sample

    pos, neg = {}, {}
    if control is not None:
        hint = hint_input(control, selection, image)
        cn = control.control.copy()
        cn.preprocess_image = lambda _resized: hint  # core's hint hook: the input computed above
        cn = cn.set_cond_hint(image.float().cpu(), 1.0, (0.0, 1.0))
        pos = neg = {"control": cn, "control_apply_to_uncond": False}
    positive = [[context, pos]]
    negative = [[uncond, neg]]
    r = a.resolution
    latent = comfy.sample.fix_empty_latent_channels(base.patcher, torch.zeros(1, 4, r // 8, r // 8))
    noise = comfy.sample.prepare_noise(latent, seed)
    out = comfy.sample.sample(base.patcher, noise, a.steps, a.cfg, a.sampler, a.scheduler, positive, negative,
                              latent, seed=seed, disable_pbar=True)
    return base.vae.decode(out).float().cpu().clamp(0, 1)[0].movedim(-1, 0)


def _progress(total: int, disable: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is optional
        return None
    return tqdm(total=total, desc="generate", unit="image", disable=disable, dynamic_ncols=True)


# --- scoring -------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def sorted_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def pair_files(generated: Path, reference: Path) -> list[tuple[Path, Path]]:
    """Generated and reference files paired by sorted file name (the k-th with the k-th)."""
    gen, ref = sorted_images(generated), sorted_images(reference)
    if len(gen) != len(ref) or not gen:
        raise SCGError(f"cannot pair {generated} ({len(gen)} images) with {reference} ({len(ref)} images): "
                       "the folders must hold the same number of images, paired by sorted name")
    return list(zip(gen, ref))


class Scorer:
    """Table 1's metrics of generated folders against one reference folder."""

    def __init__(self, reference: Path, fid_weights=None, clip_model=None, device="cpu"):
        self.reference = Path(reference)
        self.skipped: dict[str, str] = {}
        self.fid = self.clip = None
        try:
            self.fid = metrics.InceptionFeatures(fid_weights, device)
        except metrics.MetricUnavailable as e:
            self.skipped["fid"] = str(e)
        try:
            self.clip = metrics.ClipImages(clip_model, device)
        except metrics.MetricUnavailable as e:
            self.skipped["clip"] = str(e)
        self._ref_cache: dict[str, torch.Tensor] = {}

    def _reference_features(self, kind: str, refs: list[Path], fn) -> torch.Tensor:
        key = kind + "\0" + "\0".join(map(str, refs))
        if key not in self._ref_cache:
            self._ref_cache[key] = torch.cat([fn(torch.stack([read_png(p) for p in refs[i:i + 16]]))
                                              for i in range(0, len(refs), 16)])
        return self._ref_cache[key]

    def score(self, generated: Path) -> dict:
        """Mean metrics of one generated folder and the per-image values (pairs by sorted name)."""
        pairs = pair_files(generated, self.reference)
        per_image = []
        for g, r in pairs:
            x, y = read_png(g)[None], read_png(r)[None]
            if x.shape != y.shape:
                raise SCGError(f"{g.name} is {x.shape[-1]}x{x.shape[-2]} but its reference {r.name} is "
                               f"{y.shape[-1]}x{y.shape[-2]}")
            vals = {k: float(v[0]) for k, v in metrics.similarity(x, y).items()}
            per_image.append({"generated": g.name, "reference": r.name, **vals})
        means = {k: sum(p[k] for p in per_image) / len(per_image) for k in ("psnr_grey", "psnr_colour",
                                                                            "ssim_grey", "ssim_colour")}
        gens, refs = [g for g, _ in pairs], [r for _, r in pairs]
        for kind, model in (("fid", self.fid), ("clip", self.clip)):
            if model is None:
                means[kind] = None
                continue
            fn = model if kind == "fid" else model.embed
            a = torch.cat([fn(torch.stack([read_png(p) for p in gens[i:i + 16]])) for i in range(0, len(gens), 16)])
            b = self._reference_features(kind, refs, fn)
            if kind == "fid":
                means[kind] = metrics.fid_from_features(a, b) if len(gens) >= 2 else None
                if len(gens) < 2:
                    self.skipped["fid"] = "FID skipped: needs at least 2 images"
            else:
                sims = metrics.clip_similarity(a, b)
                for p, s in zip(per_image, sims.tolist()):
                    p["clip"] = s
                means[kind] = float(sims.mean())
        return {"n": len(pairs), "metrics": means, "per_image": per_image}


# --- reports ---------------------------------------------------------------------------------------
def _fmt(value, key: str) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if key.startswith("psnr") or key == "fid" else f"{value:.4f}"


def write_markdown(report: dict, path: Path) -> None:
    keys = [k for k in COLUMNS if any(r["metrics"].get(k) is not None for r in report["rows"])]
    s = report["settings"]
    lines = [f"# SCG evaluation: {len(report['rows'])} selection(s) x {report['rows'][0]['n']} image(s)", ""]
    if "checkpoint" in s:
        lines += [f"Base `{s['checkpoint']}`, {s['steps']} steps {s['sampler']}/{s['scheduler']}, CFG {s['cfg']}, "
                  f"{s['resolution']} px, seeds from {s['seed']}. Generated images against the VAE reconstruction "
                  "of each original, paired by sorted name. Higher is better except FID.", ""]
    else:
        lines += [f"Existing folders against `{s['reference']}`, paired by sorted name. Higher is better except "
                  "FID.", ""]
    header = ["selection", "ControlNet", "images"] + [COLUMNS[k][0] + (f" ({COLUMNS[k][1]})" if COLUMNS[k][1] else "")
                                                    for k in keys]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["rows"]:
        cells = [f"`{r['selection']}`", f"`{r['controlnet']}`" if r["controlnet"] else "-", str(r["n"])]
        lines.append("| " + " | ".join(cells + [_fmt(r["metrics"].get(k), k) for k in keys]) + " |")
    if report["skipped"]:
        lines += [""] + [f"- {msg}" for msg in report["skipped"].values()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(report: dict, path: Path) -> None:
    """Strict JSON: an infinite PSNR (identical images) is written as the string "inf"."""
    path.write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def bar_chart(labels: list[str], values: list[float | None], title: str, path: Path) -> None:
    """A bar chart PNG drawn with PIL (no plotting library needed): one bar per selection,
    value printed above it; missing or infinite values are drawn as a labelled gap."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    bar_w, gap, left, top, bottom, height = 70, 30, 60, 50, 60, 260
    width = left + gap + len(labels) * (bar_w + gap)
    img = Image.new("RGB", (width, top + height + bottom), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 15), title, fill="black", font=font)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    lo = min(0.0, *finite) if finite else 0.0
    hi = max(0.0, *finite) if finite else 1.0
    span = (hi - lo) or 1.0
    y0 = top + height * hi / span  # the zero line
    d.line([(left, y0), (width - gap // 2, y0)], fill="black")
    for k, (label, v) in enumerate(zip(labels, values)):
        x = left + gap + k * (bar_w + gap)
        if v is not None and math.isfinite(v):
            y = top + height * (hi - v) / span
            d.rectangle([x, min(y, y0), x + bar_w, max(y, y0)], fill=(70, 110, 170), outline="black")
            d.text((x + 4, min(y, y0) - 14), f"{v:.4g}", fill="black", font=font)
        else:
            d.text((x + 4, y0 - 14), "inf" if v is not None else "n/a", fill="black", font=font)
        d.text((x + 4, top + height + 10), label[:12], fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_charts(report: dict, out: Path) -> list[str]:
    written = []
    labels = [r["selection"] for r in report["rows"]]
    for key, (title, unit, higher) in COLUMNS.items():
        values = [r["metrics"].get(key) for r in report["rows"]]
        if all(v is None for v in values):
            continue
        path = out / f"chart_{key}.png"
        bar_chart(labels, values, f"{title}{' (' + unit + ')' if unit else ''}, "
                                  f"{'higher' if higher else 'lower'} is better", path)
        written.append(path.name)
    return written


# --- the run -------------------------------------------------------------------------------------
RUN_FILE = "run.json"


def run_key(a, p: Plan) -> dict:
    """What the images in --out depend on; --resume requires it unchanged."""
    def ident(path):
        return {"file": os.path.abspath(path), "bytes": os.path.getsize(path)} if path else None

    return {"checkpoint": ident(a.checkpoint), "controlnets": {g: ident(f) for g, f in sorted(p.controlnets.items())},
            "autoencoder": ident(a.autoencoder), "images": os.path.abspath(a.images), "captions": ident(a.captions),
            "prompt": a.prompt, "negative": a.negative, "resolution": a.resolution, "fit": a.fit, "steps": a.steps,
            "cfg": a.cfg,
            "sampler": a.sampler, "scheduler": a.scheduler, "seed": a.seed, "limit": a.limit,
            "dtype": str(p.dtype), "device_type": p.device.type}


def start_run(a, p: Plan, out: Path) -> None:
    """Refuse to mix runs in one --out; with --resume, the settings must be those of the run there."""
    key = run_key(a, p)
    path = out / RUN_FILE
    if path.is_file():
        if not a.resume:
            raise SCGError(f"--out: {out} already holds an evaluation ({RUN_FILE}); pass --resume to continue it "
                           "or choose another folder")
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise SCGError(f"--resume: {path} is not readable JSON") from None
        changed = sorted(k for k in set(key) | set(old) if key.get(k) != old.get(k))
        if changed:
            raise SCGError(f"--resume: the run in {out} used other settings ({', '.join(changed)} changed); "
                           "use the same options or another --out")
    elif out.is_dir() and (out / "samples").exists():
        raise SCGError(f"--out: {out} holds samples/ but no {RUN_FILE}; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")


def _control(loaded: dict, path: str, p: Plan, base, a) -> Control:
    """The ControlNet of ``path``, loaded once (one file in memory at a time); every selection
    it serves is checked against its autoencoder before anything is generated with it."""
    if path not in loaded:
        loaded.clear()
        loaded[path] = load_control(path, base, a.autoencoder, p.device, p.dtype)
        for other in p.groups:
            if p.controlnet_for(other) == path:
                try:
                    loaded[path].ae.resolve_modules(other)
                except SCGError as e:
                    raise SCGError(f"--groups: {other!r}: {e}") from None
    return loaded[path]


def generate_all(a, p: Plan, todo: list[Item], out: Path) -> tuple[list[dict], int]:
    """Write ``reference/`` and ``samples/<selection>/`` (skipping files already there, which only
    --resume allows). Returns one row per selection and the number of images generated."""
    import comfy.model_management as mm

    from . import sd15

    base = sd15.load_base(a.checkpoint, unet_dtype=p.dtype)

    def original(it: Item) -> torch.Tensor:
        return load_original(Path(a.images) / it.source, a.resolution, a.fit)

    for it in todo:
        if not (out / "reference" / it.name).is_file():
            save_png(reconstruct(base, original(it))[0], out / "reference" / it.name)
    uncond = sd15.encode_text(base, [a.negative])
    generated, rows, loaded = 0, [], {}
    bar = _progress(len(p.groups) * len(todo), a.no_progress)
    try:
        for selection in p.groups:
            path = p.controlnet_for(selection)
            control = _control(loaded, path, p, base, a) if path else None
            trained = control.info.get("selection") if control else None
            if control is not None and control.kind == "per_group" and trained and trained != selection:
                log.warning("%s was trained on %s but is evaluated with %s", os.path.basename(path), trained,
                            selection)
            folder = out / "samples" / folder_label(selection)
            for it in todo:
                if not (folder / it.name).is_file():
                    context = sd15.encode_text(base, [it.caption])
                    save_png(generate(base, control, selection, original(it), context, uncond, it.seed, a),
                             folder / it.name)
                    generated += 1
                if bar is not None:
                    bar.update(1)
            mm.unload_all_models()
            rows.append({"selection": selection, "folder": str(folder.relative_to(out)),
                         "controlnet": os.path.basename(path) if path else "", "trained_on": trained})
    finally:
        if bar is not None:
            bar.close()
    return rows, generated


def device_of(a) -> torch.device:
    if a.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(a.device)
    except RuntimeError:
        raise SCGError(f"--device: {a.device!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        raise SCGError(f"--device: {a.device} is not available here (auto, cpu, cuda, cuda:N)")
    return device


def write_report(report: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    write_json(report, out / "results.json")
    write_markdown(report, out / "results.md")
    report["charts"] = write_charts(report, out)
    return report


def score_only(a) -> dict:
    """--score-folders: the metrics of existing folders, no generation."""
    if len(a.score_folders) < 2:
        raise SCGError("--score-folders: give the reference folder, then at least one folder of generated images")
    folders = [Path(f) for f in a.score_folders]
    for f in folders:
        if not f.is_dir():
            raise SCGError(f"--score-folders: {f} is not a folder")
    scorer = Scorer(folders[0], a.fid_weights, a.clip_model, device_of(a))
    rows = [{"selection": f.name, "folder": str(f.resolve()), "controlnet": "", "trained_on": None,
             **scorer.score(f)} for f in folders[1:]]
    settings = {"reference": str(folders[0].resolve()), "pairing": "generated and reference files by sorted name",
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return write_report({"settings": settings, "skipped": dict(scorer.skipped), "rows": rows}, Path(a.out))


def run(a) -> dict:
    """Evaluate as the parsed command line ``a`` says; returns the report (also written to --out)."""
    if a.score_folders:
        return score_only(a)
    p = plan(a)
    todo = items(a)
    if p.device.type == "cuda" and p.device.index is not None:
        torch.cuda.set_device(p.device)
    from . import sd15

    sd15.import_comfy(a.comfyui, cpu=p.device.type == "cpu")
    out = Path(a.out)
    start_run(a, p, out)
    t0 = time.time()
    rows, generated = generate_all(a, p, todo, out)
    seconds = time.time() - t0
    scorer = Scorer(out / "reference", a.fid_weights, a.clip_model, p.device)
    for row in rows:
        row.update(scorer.score(out / row["folder"]))
    report = {
        "settings": {"checkpoint": os.path.basename(a.checkpoint), "autoencoder": a.autoencoder or "from ControlNet",
                     "images": os.path.abspath(a.images), "resolution": a.resolution, "fit": a.fit,
                     "steps": a.steps,
                     "cfg": a.cfg, "sampler": a.sampler, "scheduler": a.scheduler, "seed": a.seed,
                     "negative": a.negative, "prompt": a.prompt, "device": str(p.device),
                     "dtype": str(p.dtype).replace("torch.", ""), "generated": generated,
                     "generation_seconds": round(seconds, 1),
                     "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "reference": f"SD VAE encode-decode of each original ({a.fit}, resized)",
                     "pairing": "generated and reference files by sorted name"},
        "skipped": dict(scorer.skipped),
        "rows": rows,
    }
    return write_report(report, out)


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if os.environ.get("SCG_VERBOSE") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
    try:
        report = run(a)
    except SCGError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(a.out, "results.md").read_text(encoding="utf-8"))  # the skipped metrics' reasons included
    print(f"wrote {a.out}: results.md, results.json, {', '.join(report['charts'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

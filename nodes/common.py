"""Shared pieces of the SCG nodes: the SCG_AUTOENCODER type, image adapting, devices and dtypes.

Only type, device, dtype and memory-management glue lives here; every tensor
computation is in ``scg_models``.
"""
from __future__ import annotations

import copy
import logging
import math
import os

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from ..scg_models import ModularAutoencoder, SCGError, parse_gains
from ..scg_models.imaging import to_rgb

log = logging.getLogger("SCG")

CATEGORY = "conditioning/controlnet/SCG"
LOADER_CATEGORY = "loaders/SCG"
MODEL_FOLDER = "scg"

#: the custom link type carrying an :class:`SCGAutoencoder`
ScgAutoencoderType = io.Custom("SCG_AUTOENCODER")

MODULES_TOOLTIP = ("Which modules make the hint: a group name of the autoencoder (HC0..HC9 for the authors' model: "
                   "HC0 colour, HC1 brightness, HC2/HC3 edges, HC4/HC5 high frequencies), several joined with + "
                   "(HC2+HC3), module numbers such as 0,1,4, or all. Use the group the ControlNet was trained on.")
GAINS_TOOLTIP = ("Optional per-module gains applied to the features before decoding, as module:gain pairs "
                 "(0:1.5,4:0.5) or group:gain pairs (HC0:1.5), or one number for every selected module (1.5). "
                 "Empty: all 1. Scaling the colour modules up or down changes saturation/contrast in the result.")

_COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


#: the autoencoder shipped with the extension (offered by Load SCG Autoencoder by default)
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scg_models", "weights")
SHIPPED_MODEL = "scg_default.safetensors"


def register_model_folder() -> str:
    """Register ``models/scg`` with ComfyUI, keeping any paths extra_model_paths.yaml already gave.

    The extension's own ``scg_models/weights`` (the shipped autoencoder) comes last.
    """
    scg_dir = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = ([], set(folder_paths.supported_pt_extensions))
    for path in (scg_dir, SHIPPED_DIR):
        if path not in folder_paths.get_folder_paths(MODEL_FOLDER):
            folder_paths.add_model_folder_path(MODEL_FOLDER, path)
    return scg_dir


class SCGAutoencoder:
    """What travels on an SCG_AUTOENCODER link.

    ``ae``: the autoencoder with fp32 weights on ComfyUI's offload device. ComfyUI's memory
    management moves it: :meth:`patcher` gives the ``ModelPatcher`` for a compute dtype (one
    per dtype, made once), which the sampler loads together with the UNet and ControlNet.
    """

    def __init__(self, ae: ModularAutoencoder, name: str):
        self.ae = ae.float().eval().requires_grad_(False).to(mm.unet_offload_device())
        self.name = name
        self._patchers: dict[torch.dtype, comfy.model_patcher.ModelPatcher] = {}

    def patcher(self, dtype: torch.dtype = torch.float32) -> comfy.model_patcher.ModelPatcher:
        if dtype not in _COMPUTE_DTYPES:
            dtype = torch.float32  # e.g. fp8 weights: compute in fp32
        if dtype not in self._patchers:
            model = self.ae if dtype == torch.float32 else self._copy(dtype)
            self._patchers[dtype] = comfy.model_patcher.ModelPatcher(
                model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        return self._patchers[dtype]

    def _copy(self, dtype: torch.dtype) -> ModularAutoencoder:
        """A fresh autoencoder with these weights in ``dtype`` on the offload device.

        Built anew rather than deep-copied: a deep copy would also copy the bookkeeping
        ComfyUI's ModelPatcher keeps on the module (its device, loaded bytes).
        """
        ae = ModularAutoencoder(copy.deepcopy(self.ae.config))
        ae.load_state_dict(self.ae.state_dict())
        return ae.to(device=mm.unet_offload_device(), dtype=dtype).eval().requires_grad_(False)

    def __repr__(self):
        return f"SCGAutoencoder({self.name!r}, {self.ae.extra_repr()})"


def loaded_module(patcher: comfy.model_patcher.ModelPatcher) -> tuple[ModularAutoencoder, torch.device]:
    """The patcher's autoencoder and the device it runs on.

    ComfyUI normally moves all of it to the compute device; if its weights ended up split
    between devices (very low VRAM), a copy on the compute device is used.
    """
    ae = patcher.model
    devices = {p.device for p in ae.parameters()}
    if len(devices) == 1:
        return ae, devices.pop()
    log.debug("SCG autoencoder weights are split across %s; using a copy on %s", devices, patcher.load_device)
    return copy.deepcopy(ae).to(patcher.load_device), torch.device(patcher.load_device)


def image_to_nchw(image, ae: ModularAutoencoder, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE (B x H x W x C in [0, 1]) -> B x 3 x H x W, checked for ``ae`` (errors name the input).

    The one conversion in: grey is repeated, alpha dropped (with a log line); the result is
    what the autoencoder takes, so nothing after this checks it again.
    """
    if not isinstance(image, torch.Tensor):
        raise SCGError(f"{name}: expected an IMAGE tensor, got {type(image).__name__}")
    if image.dim() in (2, 3):
        raise SCGError(f"{name}: got a MASK-shaped tensor {tuple(image.shape)} (B x H x W), not an IMAGE "
                       "(B x H x W x C); convert it with 'Convert Mask to Image' first")
    if image.dim() != 4:
        raise SCGError(f"{name}: expected an IMAGE B x H x W x C, got shape {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise SCGError(f"{name}: the batch is empty (0 images)")
    x, note = to_rgb(image.movedim(-1, 1), name)
    if note:
        log.info("SCG: %s", note)
    return ae.check_images(x, name)


def to_image(x: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> ComfyUI IMAGE B x H x W x C, float32 on ComfyUI's intermediate device (the one conversion out)."""
    return x.movedim(1, -1).to(device=mm.intermediate_device(), dtype=torch.float32).contiguous()


def check_number(value, name: str, low: float, high: float) -> float:
    """A FLOAT node input, finite and within [low, high] (the executor does not check NaN)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SCGError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(v) or not low <= v <= high:
        raise SCGError(f"{name}: expected a number from {low:g} to {high:g}, got {v!r}")
    return v


def plural(n: int, word: str) -> str:
    """'1 image', '3 images'."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def check_autoencoder(scg_autoencoder, name: str = "scg_autoencoder") -> SCGAutoencoder:
    if not isinstance(scg_autoencoder, SCGAutoencoder):
        raise SCGError(f"{name}: connect an SCG autoencoder ('Load SCG Autoencoder' or the second output of "
                       "'Load SCG ControlNet')")
    return scg_autoencoder


def resolve_selection(ae: ModularAutoencoder, modules: str, gains: str) -> tuple[list[int], list[float] | None]:
    """The node inputs ``modules`` and ``gains`` checked against the autoencoder (errors name them)."""
    mods = ae.resolve_modules(modules)
    return mods, parse_gains(gains, mods, ae.n_vector, ae.groups)

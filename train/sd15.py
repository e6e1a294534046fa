"""SD1.5 through ComfyUI's own code, for the ControlNet trainer (``python -m train.controlnet``).

Everything that touches ComfyUI lives here: finding and importing the checkout, loading the
base checkpoint with ComfyUI's loaders (and refusing anything that is not SD1.5), building the
trainable ControlNet with ComfyUI's ``comfy.cldm.cldm.ControlNet`` class, encoding images and
captions with the base's VAE and CLIP, the training forward pass, and sampling with ComfyUI's
own sampler for the progress sheets. Tests build tiny SD1.5-architecture bases elsewhere
(``tests/lib/scg_testing/tiny_sd15.py``); nothing here is test-only.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import torch

from scg_models.errors import SCGError

log = logging.getLogger("scg.train")

class NotSD15Error(SCGError):
    """The base model is not Stable Diffusion 1.5."""


# --- the ComfyUI checkout ----------------------------------------------------------------
def find_comfyui(explicit: str | os.PathLike | None = None) -> Path | None:
    """The ComfyUI checkout: ``explicit``, $COMFYUI_PATH, the ComfyUI holding this repository in
    ``custom_nodes/``, ``~/comfy/ComfyUI`` (the order the host tests use)."""
    here = Path(__file__).resolve().parents[1]
    candidates = [explicit, os.environ.get("COMFYUI_PATH")]
    if here.parent.name == "custom_nodes":
        candidates.append(here.parent.parent)
    candidates.append(Path.home() / "comfy" / "ComfyUI")
    for c in candidates:
        if c and (Path(c) / "comfy" / "model_management.py").is_file() and (Path(c) / "nodes.py").is_file():
            return Path(c).resolve()
    if explicit:
        raise SCGError(f"--comfyui: {explicit} is not a ComfyUI checkout (no comfy/model_management.py)")
    return None


def import_comfy(explicit=None, cpu: bool = False) -> Path:
    """Put ComfyUI on ``sys.path`` and import its model code (once per process).

    ``cpu`` (or no CUDA) sets ComfyUI's ``--cpu`` before ``comfy.model_management`` is imported.
    Under ``torchrun`` call ``torch.cuda.set_device(local_rank)`` first: ComfyUI picks the
    current CUDA device when it is imported. Returns the checkout's path.
    """
    if "comfy.model_management" in sys.modules:
        return Path(sys.modules["comfy"].__path__[0]).parent
    host = find_comfyui(explicit)
    if host is None:
        raise SCGError("no ComfyUI checkout found: pass --comfyui PATH or set $COMFYUI_PATH (also searched: the "
                       "ComfyUI holding this folder in custom_nodes/, ~/comfy/ComfyUI)")
    if str(host) not in sys.path:
        sys.path.append(str(host))  # appended: our own top-level packages (nodes, tests) keep their names
    from comfy.cli_args import args

    if cpu or not torch.cuda.is_available():
        args.cpu = True
    root = logging.getLogger()
    level = root.level
    if not os.environ.get("SCG_VERBOSE"):
        root.setLevel(logging.ERROR)  # ComfyUI's import-time notes (optional packages it lacks)
    try:
        import comfy.cldm.cldm
        import comfy.controlnet
        import comfy.model_management
        import comfy.sample
        import comfy.sd  # noqa: F401
    finally:
        root.setLevel(level)
    return host


# --- SD1.5 or not ------------------------------------------------------------------------
def _describe(unet_config: dict | None) -> str:
    if not unet_config:
        return "no recognisable UNet"
    keys = ("model_channels", "context_dim", "in_channels", "adm_in_channels", "use_linear_in_transformer")
    return ", ".join(f"{k} {unet_config.get(k)}" for k in keys)


def check_sd15_state_dict(sd: dict, source: str):
    """ComfyUI's detection of a checkpoint state dict; raise :class:`NotSD15Error` unless SD1.5.

    Works on tensors of any device, ``meta`` included (only shapes are read). Returns the
    model config ComfyUI detected.
    """
    import comfy.model_detection
    import comfy.supported_models

    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    unet_config = comfy.model_detection.detect_unet_config(sd, prefix)
    model_config = comfy.model_detection.model_config_from_unet(sd, prefix) if unet_config else None
    if model_config is None or type(model_config) is not comfy.supported_models.SD15:
        found = type(model_config).__name__ if model_config is not None else "a model ComfyUI does not recognise"
        raise NotSD15Error(f"--base: {source} is not a Stable Diffusion 1.5 checkpoint: ComfyUI detects {found} "
                           f"({_describe(unet_config)}). SCG ControlNets are trained on SD1.5 "
                           f"(e.g. v1-5-pruned-emaonly.safetensors); SDXL, SD2.x, SD3, Flux and SD1.5 variants "
                           f"such as inpainting or instruct-pix2pix are refused.")
    return model_config


def check_sd15_model(model, source: str) -> None:
    """The loaded ``BaseModel`` is SD1.5-shaped and predicts epsilon (what the objective assumes)."""
    import comfy.latent_formats
    import comfy.model_base

    c = model.model_config.unet_config
    problems = []
    if model.model_type != comfy.model_base.ModelType.EPS:
        problems.append(f"predicts {model.model_type.name}, not epsilon")
    if c.get("in_channels") != 4 or c.get("out_channels", 4) != 4:
        problems.append(f"in/out channels {c.get('in_channels')}/{c.get('out_channels')} (inpainting-style?)")
    if c.get("adm_in_channels") is not None or c.get("use_linear_in_transformer"):
        problems.append("has SDXL/SD2-style features (adm_in_channels or linear transformer projections)")
    if c.get("use_temporal_attention") or c.get("use_temporal_resblock"):
        problems.append("is a video model")
    if not isinstance(model.latent_format, comfy.latent_formats.SD15):
        problems.append(f"uses the {type(model.latent_format).__name__} latent space")
    if problems:
        raise NotSD15Error(f"--base: {source} is not a Stable Diffusion 1.5 model: it " + "; it ".join(problems))


# --- initialisation ------------------------------------------------------------------------
def init_weights(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """PyTorch's default initialisation for every layer (ComfyUI's layers skip it), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            for cls in type(m).__mro__:
                if cls.__module__.startswith("torch.nn.modules") and "reset_parameters" in cls.__dict__:
                    cls.reset_parameters(m)
                    break
    return module


@dataclasses.dataclass
class Base:
    """The frozen SD1.5 base: ComfyUI's objects, as its loaders return them."""

    patcher: object  # comfy.model_patcher.ModelPatcher around ``model`` (for ComfyUI's sampler)
    clip: object  # comfy.sd.CLIP
    vae: object  # comfy.sd.VAE
    source: str

    @property
    def model(self):
        """comfy.model_base.BaseModel (``.diffusion_model``, ``.model_sampling``, ``.latent_format``)."""
        return self.patcher.model

    @property
    def unet(self) -> torch.nn.Module:
        return self.patcher.model.diffusion_model

    @property
    def unet_config(self) -> dict:
        return self.patcher.model.model_config.unet_config

    @property
    def context_dim(self) -> int:
        return int(self.unet_config["context_dim"])

    @property
    def latent_factor(self) -> int:
        """Image pixels per latent cell (8) times the UNet's own downsampling."""
        return 8 * 2 ** (len(self.unet_config["channel_mult"]) - 1)


def load_base(path, unet_dtype=torch.float32) -> Base:
    """The SD1.5 base (UNet, CLIP, VAE) from one checkpoint file, through ComfyUI's loaders.

    Refuses anything that is not SD1.5 with :class:`NotSD15Error` before building models.
    ``unet_dtype`` is the frozen UNet's weight dtype (fp32, or bf16 for bf16 training).
    """
    import comfy.sd
    import comfy.utils

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SCGError(f"--base: {path} not found (an SD1.5 checkpoint such as v1-5-pruned-emaonly.safetensors)")
    sd, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    check_sd15_state_dict(sd, path)
    out = comfy.sd.load_state_dict_guess_config(sd, output_vae=True, output_clip=True, embedding_directory=None,
                                                model_options={"dtype": unet_dtype}, metadata=metadata)
    if out is None:
        raise NotSD15Error(f"--base: ComfyUI could not load {path} as a checkpoint")
    patcher, clip, vae = out[:3]
    if clip is None:
        raise SCGError(f"--base: {path} has no text encoder; use a full SD1.5 checkpoint (UNet, CLIP and VAE)")
    if vae is None or getattr(vae, "first_stage_model", None) is None:
        raise SCGError(f"--base: {path} has no VAE; use a full SD1.5 checkpoint (UNet, CLIP and VAE)")
    check_sd15_model(patcher.model, path)
    return Base(patcher, clip, vae, path)


# --- the ControlNet ----------------------------------------------------------------------
def controlnet_config(unet_config: dict, device=None, dtype=torch.float32, hint_channels: int = 3) -> dict:
    """``comfy.cldm.cldm.ControlNet`` kwargs for a base UNet config (as ComfyUI's loader builds it).
    ``hint_channels``: 3 (an SCG hint), or 3 + n_vector for an any-subset ControlNet."""
    import comfy.ops

    cfg = {k: v for k, v in unet_config.items() if k not in ("out_channels", "dtype", "device", "operations")}
    cfg.update(hint_channels=hint_channels, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)
    return cfg


#: the ControlNet parts that do not come from the UNet's encoder
NEW_PREFIXES = ("input_hint_block.", "zero_convs.", "middle_block_out.")


def build_controlnet(base_or_config, device=None, seed: int = 0, init: bool = True,
                     hint_channels: int = 3) -> torch.nn.Module:
    """A trainable fp32 ControlNet (ComfyUI's class) initialised from the base UNet's encoder.

    The hint block gets PyTorch's default initialisation (seeded) except its last
    convolution; that one, every zero convolution and ``middle_block_out`` start at zero, so
    the untrained ControlNet leaves the base model unchanged. ``base_or_config`` may be a
    :class:`Base` or a UNet config dict (``init`` is then ignored: weights stay uninitialised,
    e.g. on the ``meta`` device). ``hint_channels``: the hint block's input width (3 + n_vector for
    an any-subset ControlNet: hint and presence mask).
    """
    import comfy.cldm.cldm

    config = base_or_config.unet_config if isinstance(base_or_config, Base) else base_or_config
    cm = comfy.cldm.cldm.ControlNet(**controlnet_config(config, device=device, hint_channels=hint_channels))
    if not isinstance(base_or_config, Base) or not init:
        return cm
    missing, unexpected = cm.load_state_dict(base_or_config.unet.state_dict(), strict=False)
    stray = [k for k in missing if not k.startswith(NEW_PREFIXES)]
    if stray:
        raise SCGError(f"ControlNet/UNet layouts differ: {stray[:4]} not found in the base UNet")
    init_weights(cm.input_hint_block, seed)
    zero = [cm.input_hint_block[-1], cm.middle_block_out] + list(cm.zero_convs)
    with torch.no_grad():
        for m in zero:
            for p in m.parameters():
                p.zero_()
    return cm


def widen_hint_input(state_dict: dict, channels: int) -> dict:
    """A ControlNet state dict whose hint block takes ``channels`` inputs: a per-group ControlNet
    (3-channel hint block) becomes the start of an any-subset one. The extra input weights are
    zero, so the widened ControlNet computes exactly what the per-group one did whatever the
    presence mask says; training then learns to use the mask."""
    key = "input_hint_block.0.weight"
    w = state_dict[key]
    if w.shape[1] == channels:
        return dict(state_dict)
    if w.shape[1] > channels:
        raise SCGError(f"{key}: takes {w.shape[1]} channels, cannot narrow it to {channels}")
    extra = w.new_zeros(w.shape[0], channels - w.shape[1], *w.shape[2:])
    return {**state_dict, key: torch.cat([w, extra], dim=1)}


def hint_block_size(hint_hw: tuple[int, int], cm: torch.nn.Module) -> tuple[int, int]:
    """Spatial size the ControlNet's hint block turns a hint of ``hint_hw`` into."""
    h, w = hint_hw
    for m in cm.input_hint_block:
        if isinstance(m, torch.nn.Conv2d):
            k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return h, w


# --- encoders ----------------------------------------------------------------------------
def escape_caption(text: str) -> str:
    """A caption read literally by ComfyUI's tokenizer: parentheses are not prompt weights."""
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


@torch.no_grad()
def encode_text(base: Base, captions: list[str]) -> torch.Tensor:
    """Captions -> SD1.5 text conditioning Bx77xcontext_dim (float32, CPU), with ComfyUI's CLIP.

    Literal text (parentheses escaped); longer captions keep their first 77-token chunk,
    as SD1.5's own text encoder truncates.
    """
    out = []
    for text in captions:
        cond = base.clip.encode_from_tokens(base.clip.tokenize(escape_caption(text)))
        out.append(cond[:, :77].float().cpu())
    return torch.cat(out).clone()


@torch.no_grad()
def encode_images(base: Base, images: torch.Tensor) -> torch.Tensor:
    """Bx3xHxW in [0, 1] -> SD1.5 latents Bx4xH/8xW/8 as the UNet sees them (scaled; float32, CPU).

    ComfyUI's VAE encode (the posterior's mean), then the model's ``latent_format.process_in``.
    """
    raw = base.vae.encode(images.movedim(1, -1).float().cpu())
    return base.model.latent_format.process_in(raw).float().cpu().clone()


# --- the training forward pass ----------------------------------------------------------
def predict_noise(unet, controlnet, model_sampling, x_t, sigma, context, hint) -> torch.Tensor:
    """eps-prediction of the frozen UNet with the ControlNet's residuals, at noise level ``sigma``.

    The same input scaling ComfyUI applies at inference (``calculate_input`` and
    ``timestep`` of the model's own sampling object) for both networks; the control
    residuals go in through the UNet's ``control`` argument, as at inference.
    """
    xc = model_sampling.calculate_input(sigma, x_t)
    t = model_sampling.timestep(sigma).float()
    ctrl = controlnet(x=xc, hint=hint, timesteps=t, context=context)
    control = {"middle": list(ctrl["middle"]), "output": list(ctrl["output"])}  # the UNet pops these
    return unet(xc, t, context=context, control=control, transformer_options={})


def _checkpoint_targets(module):
    for name in ("input_blocks", "output_blocks"):
        for block in getattr(module, name, []):
            yield from block
    yield from getattr(module, "middle_block", [])
    if hasattr(module, "input_hint_block"):
        yield module.input_hint_block


def enable_checkpointing(*modules) -> int:
    """Gradient checkpointing on every layer of the UNet/ControlNet blocks (and the hint block).

    ComfyUI's UNet calls each layer of a block itself, so the layers are wrapped, not the
    blocks. Non-reentrant checkpointing (works with DDP and autocast). Returns the count.
    """
    from torch.utils.checkpoint import checkpoint

    n = 0
    for module in modules:
        for m in _checkpoint_targets(module):
            if "_scg_forward" in m.__dict__:
                continue
            forward = m.forward

            def checkpointed(*args, _forward=forward, **kwargs):
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

            m._scg_forward, m.forward = forward, checkpointed
            n += 1
    return n


def disable_checkpointing(*modules) -> int:
    """Undo :func:`enable_checkpointing`. Returns the count."""
    n = 0
    for module in modules:
        for m in _checkpoint_targets(module):
            if "_scg_forward" in m.__dict__:
                del m.__dict__["forward"], m.__dict__["_scg_forward"]
                n += 1
    return n


# --- sampling with ComfyUI's sampler (the progress sheets) -------------------------------
@torch.no_grad()
def sample(base: Base, controlnet: torch.nn.Module, images: torch.Tensor, hint_fn, context: torch.Tensor,
           uncond: torch.Tensor, steps: int = 20, cfg: float = 7.5, sampler: str = "euler",
           scheduler: str = "normal", seed: int = 0, keep_on=None) -> torch.Tensor:
    """Generate with the base and the (training) ControlNet through ``comfy.sample.sample``.

    images: Bx3xHxW in [0, 1] at the generation size; ``hint_fn(images)`` makes the hint
    (run by ComfyUI's hint preparation, so the ControlNet sees exactly what training fed it).
    context/uncond: Bx77xC. ``keep_on``: a device ComfyUI must leave the ControlNet on when it
    unloads models (the training device). Returns decoded images BxHxWx3 in [0, 1] (CPU).
    """
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.sample

    cn = comfy.controlnet.ControlNet(controlnet, load_device=mm.get_torch_device(), manual_cast_dtype=None)
    cn.preprocess_image = hint_fn
    if keep_on is not None:
        cn.control_model_wrapped.offload_device = keep_on
    cn = cn.copy().set_cond_hint(images.float().cpu(), 1.0, (0.0, 1.0))
    positive = [[context.float().cpu(), {"control": cn, "control_apply_to_uncond": False}]]
    negative = [[uncond.float().cpu(), {"control": cn, "control_apply_to_uncond": False}]]
    b, _, h, w = images.shape
    latent = torch.zeros(b, 4, h // 8, w // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    out = comfy.sample.sample(base.patcher, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                              seed=seed, disable_pbar=True)
    images = base.vae.decode(out).float().cpu().clamp(0, 1)
    mm.unload_all_models()  # while this ControlNet wrapper lives: ComfyUI forgets it cleanly
    return images


__all__ = ["Base", "NotSD15Error", "build_controlnet", "check_sd15_state_dict", "disable_checkpointing",
           "enable_checkpointing", "encode_images", "encode_text", "find_comfyui", "hint_block_size", "import_comfy",
           "init_weights", "load_base", "predict_noise", "sample", "widen_hint_input"]

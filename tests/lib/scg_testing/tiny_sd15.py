"""Tiny SD1.5-architecture models, built with ComfyUI's own classes: the one builder of every tier.

ComfyUI's checkpoint detection accepts only the real SD1.5 widths (320 UNet channels, context
768), so a tiny model cannot go through ``comfy.sd.load_checkpoint``. The pieces here are built
from a *spec* (UNet config, CLIP text config, VAE kind) with the classes ComfyUI's loader would
use (``SD15`` model config, ``BaseModel``, ``SD1ClipModel``, ``VAE``, ``cldm.ControlNet``):

* :func:`unet_config`, :func:`unet_patcher`, :func:`control_model`, :func:`controlnet`,
  :func:`taesd_vae`: ModelPatcher/CONTROL_NET/VAE objects for host-tier graphs;
* :func:`build_base`: a whole :class:`train.sd15.Base` (UNet + CLIP + VAE) for the trainer tier
  and the CPU benchmark; :func:`save_checkpoint` writes it as one ``.safetensors`` with the usual
  checkpoint prefixes and the spec in its metadata (:data:`SPEC_KEY`);
* :func:`install`: makes ``train.sd15.load_base`` build such a file from its spec (any other file
  still takes ComfyUI's loader). Production code has no spec path; tests install this hook.

Run by path, this file is ``python -m train.controlnet`` (or ``-m MODULE``, e.g. ``train.evaluate``)
with the hook installed (subprocess and ``torchrun`` tests):
``python tests/lib/scg_testing/tiny_sd15.py --base tiny.safetensors ...``.
Needs ComfyUI importable (``train.sd15.import_comfy``) before any builder is called.
"""
from __future__ import annotations

import functools
import json
import os

import torch

SPEC_KEY = "scg_sd15_spec"

#: SD1.5's UNet as ComfyUI detects it from v1-5-pruned-emaonly (``model_detection``).
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
#: SD1.5's VAE (AutoencoderKL, 8x down, 4 latent channels).
SD15_VAE = {"kind": "kl", "embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}
#: The full SD1.5 architecture as a spec (random weights: the GPU benchmark).
SD15_SPEC = {"arch": "sd15", "unet": SD15_UNET, "clip": None, "vae": SD15_VAE}


def unet_config(model_channels: int = 64, context_dim: int = 32) -> dict:
    """A two-level SD1.5-architecture UNet config. 64 channels is the smallest width ComfyUI's
    generic ControlNet loader accepts; the host tier's graphs also run at 32."""
    return {**SD15_UNET, "model_channels": model_channels, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
            "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "context_dim": context_dim}


#: A tiny base for CPU tests and the CPU benchmark: the 64-channel UNet above, a 2-layer 32-wide
#: CLIP text model with SD1.5's tokenizer, and TAESD as the VAE (8x down, 4 latent channels).
TINY_SPEC = {
    "arch": "sd15",
    "unet": unet_config(64, 32),
    "clip": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
             "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
             "projection_dim": 32, "bos_token_id": 0, "eos_token_id": 49407, "pad_token_id": 1},
    "vae": {"kind": "taesd"},
}


def seeded_init(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Every parameter ~ N(0, std^2), seeded (ComfyUI's layers skip initialisation)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


# --- pieces for host-tier graphs ---------------------------------------------------------
def unet_patcher(config: dict | None = None, seed: int = 0, std: float | None = 0.05, dtype=torch.float32):
    """ComfyUI MODEL (ModelPatcher around ``BaseModel``) of an SD1.5-architecture UNet.

    ``std``: weights ~ N(0, std^2); None: PyTorch's default initialisation (:func:`train.sd15.init_weights`).
    """
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    from train.sd15 import init_weights

    mc = comfy.supported_models.SD15(dict(config or unet_config()))
    mc.set_inference_dtype(dtype, None)
    model = mc.get_model({}, "", device=mm.unet_offload_device())
    seeded_init(model.diffusion_model, seed, std) if std is not None else init_weights(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def control_model(config: dict | None = None, unet=None, seed: int = 1, dtype=torch.float32, sdxl: bool = False,
                  std: float = 0.05):
    """``comfy.cldm.cldm.ControlNet`` for 3-channel hints, seeded, optionally copying ``unet``'s encoder."""
    import comfy.cldm.cldm
    import comfy.ops

    cfg = {k: v for k, v in (config or unet_config()).items() if k != "out_channels"}
    cfg.update(hint_channels=3, num_heads=8, num_head_channels=-1, dtype=dtype, device="cpu",
               operations=comfy.ops.disable_weight_init)
    if sdxl:
        cfg.update(adm_in_channels=16, num_classes="sequential")
    cm = seeded_init(comfy.cldm.cldm.ControlNet(**cfg), seed, std)
    if unet is not None:
        cm.load_state_dict(unet.model.diffusion_model.state_dict(), strict=False)
    return cm


def controlnet(config: dict | None = None, unet=None, seed: int = 1, **kw):
    """ComfyUI CONTROL_NET around :func:`control_model`."""
    import comfy.controlnet
    import comfy.model_management as mm

    return comfy.controlnet.ControlNet(control_model(config, unet, seed, **kw), load_device=mm.get_torch_device(),
                                       manual_cast_dtype=None)


def taesd_vae(seed: int = 2, std: float = 0.05):
    """ComfyUI VAE around a seeded TAESD (8x down, 4 latent channels)."""
    import comfy.sd
    import comfy.taesd.taesd

    sd = seeded_init(comfy.taesd.taesd.TAESD(latent_channels=4), seed, std).state_dict()
    sd["vae_scale"] = torch.tensor(1.0)
    sd["vae_shift"] = torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd)


# --- whole bases (trainer tier, benchmark) ------------------------------------------------
def _clip_target(spec: dict):
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base

    if not spec.get("clip"):
        return comfy.supported_models.SD15(dict(spec["unet"])).clip_target()
    model = functools.partial(comfy.sd1_clip.SDClipModel, textmodel_json_config=dict(spec["clip"]),
                              return_projected_pooled=False)
    return comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer,
                                                  functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=model))


def _model_config(spec: dict, source: str):
    """ComfyUI's SD15 model config for a spec; refuses what SD1.5 is not (as ComfyUI's detection would)."""
    import comfy.supported_models

    from train.sd15 import NotSD15Error

    if spec.get("arch") != "sd15":
        raise NotSD15Error(f"--base: {source} declares architecture {spec.get('arch')!r}, not 'sd15'; SCG "
                           "ControlNets are trained on Stable Diffusion 1.5 only")
    unet = dict(spec["unet"])
    for k, v in comfy.supported_models.SD15.unet_config.items():
        if k not in ("model_channels", "context_dim") and unet.get(k) != v:
            raise NotSD15Error(f"--base: {source}: UNet setting {k}={unet.get(k)!r} is not SD1.5's ({v!r})")
    return comfy.supported_models.SD15(unet)


def _vae_config(spec: dict, source: str) -> dict | None:
    vae = spec.get("vae") or {"kind": "taesd"}
    if vae["kind"] == "kl":
        return {"params": {"embed_dim": vae["embed_dim"], "ddconfig": vae["ddconfig"]}}
    if vae["kind"] != "taesd":
        raise ValueError(f"{source}: unknown VAE kind {vae['kind']!r} (taesd or kl)")
    return None


def build_base(spec: dict = TINY_SPEC, state_dict: dict | None = None, seed: int = 0, unet_dtype=torch.float32,
               source: str = "spec"):
    """A :class:`train.sd15.Base` from a spec, with ComfyUI's classes.

    ``state_dict`` uses checkpoint prefixes (``model.diffusion_model.``, ``cond_stage_model.``,
    ``first_stage_model.``); without it every weight gets PyTorch's default initialisation, seeded.
    """
    import comfy.ldm.models.autoencoder
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.taesd.taesd

    from train.sd15 import Base, init_weights

    model_config = _model_config(spec, source)
    vae_config = _vae_config(spec, source)
    # as ComfyUI's loader: weights in a dtype the device cannot compute in (bf16 on a CPU) are cast per layer
    model_config.set_inference_dtype(unet_dtype, mm.unet_manual_cast(unet_dtype, mm.get_torch_device(),
                                                                      model_config.supported_inference_dtypes))
    if state_dict is None:  # random weights: build once, initialise in place
        model = model_config.get_model({}, "", device=mm.unet_offload_device())
        init_weights(model.diffusion_model, seed)
        model.diffusion_model.to(unet_dtype)
        if vae_config is not None:
            vae_module = comfy.ldm.models.autoencoder.AutoencoderKL(**vae_config["params"])
        else:
            vae_module = comfy.taesd.taesd.TAESD(latent_channels=4)
        vae = comfy.sd.VAE(sd=init_weights(vae_module, seed + 1).state_dict(), config=vae_config)
        clip = comfy.sd.CLIP(_clip_target(spec), parameters=1)
        init_weights(clip.cond_stage_model, seed + 2)
    else:
        sd = dict(state_dict)
        model = model_config.get_model(sd, "model.diffusion_model.", device=mm.unet_offload_device())
        model.load_model_weights(sd, "model.diffusion_model.")
        clip_sd = model_config.process_clip_state_dict(sd)
        clip = comfy.sd.CLIP(_clip_target(spec), state_dict=clip_sd, parameters=sum(v.numel() for v in clip_sd.values()))
        vae_sd = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
        vae = comfy.sd.VAE(sd=vae_sd, config=vae_config)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return Base(patcher, clip, vae, source)


def save_checkpoint(base, path, spec: dict = TINY_SPEC) -> str:
    """Write a spec-built base as one ``.safetensors`` checkpoint (usual prefixes; spec in the metadata)."""
    from safetensors.torch import save_file

    sd = {"model.diffusion_model." + k: v for k, v in base.unet.state_dict().items()}
    sd.update({"first_stage_model." + k: v for k, v in base.vae.first_stage_model.state_dict().items()})
    for k, v in base.clip.cond_stage_model.state_dict().items():
        sd["cond_stage_model." + k.split(".", 1)[1]] = v
    save_file({k: v.detach().float().cpu().contiguous() for k, v in sd.items()}, os.fspath(path),
              metadata={SPEC_KEY: json.dumps(spec), "note": "SCG test/benchmark base (not a real model)"})
    return os.fspath(path)


def spec_of(path) -> dict | None:
    """The spec stored in a checkpoint written by :func:`save_checkpoint`, or None."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not path.endswith(".safetensors") or not os.path.isfile(path):
        return None
    try:
        with safe_open(path, "pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # not a safetensors file: ComfyUI's loader decides
        return None
    return json.loads(meta[SPEC_KEY]) if SPEC_KEY in meta else None


def install() -> None:
    """Make ``train.sd15.load_base`` build spec checkpoints from their spec (others: ComfyUI's loader)."""
    from train import sd15

    if getattr(sd15.load_base, "tiny_sd15", False):
        return
    real = sd15.load_base

    def load_base(path, unet_dtype=torch.float32):
        spec = spec_of(path)
        if spec is None:
            return real(path, unet_dtype=unet_dtype)
        import comfy.utils

        _model_config(spec, os.fspath(path))  # refuse a non-SD1.5 spec before reading tensors
        sd = comfy.utils.load_torch_file(os.fspath(path), safe_load=True)
        return build_base(spec, sd, unet_dtype=unet_dtype, source=os.fspath(path))

    load_base.tiny_sd15 = True
    sd15.load_base = load_base


if __name__ == "__main__":  # tiny_sd15.py [-m MODULE] ARGS == python -m MODULE ARGS (default train.controlnet)
    import importlib
    import sys

    argv = sys.argv[1:]
    module = "train.controlnet"
    if argv[:1] == ["-m"]:
        module, argv = argv[1], argv[2:]
    install()
    sys.exit(importlib.import_module(module).main(argv))

"""Host tier helpers: tiny SD1.5-architecture models built in the test (no downloads), and graph helpers.

Imported only when a host is found (tests/host/conftest.py put it on sys.path and set ``args.cpu``).
The executor helpers work on every ComfyUI of the support matrix: they use only its public entry
points and adapt to what changed between versions (cache arguments, async cache reads).
ComfyUI's ops skip weight initialisation, so every module is initialised here, seeded.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import inspect
import uuid

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.supported_models
import comfy.taesd.taesd
import torch

import nodes
from scg_models import AutoencoderConfig, ModularAutoencoder
from scg_testing.tiny_sd15 import seeded_init

CONTEXT = 32
UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": CONTEXT, "use_temporal_resblock": False,
    "use_temporal_attention": False,
}


def tiny_unet(seed: int = 0, model_channels: int = 32) -> comfy.model_patcher.ModelPatcher:
    """SD1.5-architecture UNet (32 channels, context 32) wrapped as ComfyUI's MODEL."""
    mc = comfy.supported_models.SD15({**UNET_CONFIG, "model_channels": model_channels})
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({})
    seeded_init(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def tiny_control_model(unet: comfy.model_patcher.ModelPatcher | None = None, seed: int = 1,
                       dtype=torch.float32, sdxl: bool = False, model_channels: int = 32) -> comfy.cldm.cldm.ControlNet:
    """A cldm ControlNet matching :func:`tiny_unet` (64 channels: the smallest core's ControlNet loader detects)."""
    cfg = {k: v for k, v in UNET_CONFIG.items() if k != "out_channels"}
    cfg.update(hint_channels=3, num_heads=8, num_head_channels=-1, dtype=dtype, device="cpu",
               model_channels=model_channels,
               operations=comfy.ops.disable_weight_init)
    if sdxl:
        cfg.update(adm_in_channels=16, num_classes="sequential")
    cm = comfy.cldm.cldm.ControlNet(**cfg)
    seeded_init(cm, seed, std=0.05)
    if unet is not None:
        cm.load_state_dict(unet.model.diffusion_model.state_dict(), strict=False)
    return cm


def tiny_controlnet(unet=None, seed: int = 1, **kw) -> comfy.controlnet.ControlNet:
    """ComfyUI CONTROL_NET around a tiny cldm ControlNet (hint block for 3-channel hints)."""
    return comfy.controlnet.ControlNet(tiny_control_model(unet, seed, **kw), load_device=mm.get_torch_device(),
                                       manual_cast_dtype=None)


def tiny_vae(seed: int = 2) -> comfy.sd.VAE:
    t = comfy.taesd.taesd.TAESD(latent_channels=4)
    seeded_init(t, seed, std=0.05)
    sd = t.state_dict()
    sd["vae_scale"] = torch.tensor(1.0)
    sd["vae_shift"] = torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd)


def conditioning(seed: int = 3, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, 77, CONTEXT, generator=g), {}]], [[torch.zeros(batch, 77, CONTEXT), {}]]


def random_ae(seed: int = 0, **kw) -> ModularAutoencoder:
    """The authors' architecture (Bipolar 16x4 unless told otherwise) with seeded random weights."""
    ae = ModularAutoencoder(AutoencoderConfig(**kw))
    seeded_init(ae, seed, std=0.1)
    return ae.eval().requires_grad_(False)


def make_images(batch: int = 1, height: int = 64, width: int = 64, seed: int = 4) -> torch.Tensor:
    """ComfyUI IMAGE BxHxWx3 in [0, 1]: smooth colour blobs plus an edge, so every group sees something."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 3, max(2, height // 8), max(2, width // 8), generator=g)
    x = torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear", align_corners=False)
    x[:, :, : height // 2, : width // 3] = 1.0 - x[:, :, : height // 2, : width // 3]
    return x.movedim(1, -1).contiguous()


def sample(model, positive, negative, latent: torch.Tensor, steps: int = 3, seed: int = 0, cfg: float = 4.0):
    """KSampler (euler, normal) through core's common_ksampler, under inference mode as the host runs it.

    Subnormal floats are flushed meanwhile: random tiny weights produce some, and they make
    CPU arithmetic many times slower (real checkpoints do not). The flag is per thread, so
    the CPU work runs on this one thread meanwhile.
    """
    threads = torch.get_num_threads()
    flushing = torch.set_flush_denormal(True)
    if flushing and mm.get_torch_device().type == "cpu":
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            out = nodes.common_ksampler(model, seed, steps, cfg, "euler", "normal", positive, negative,
                                        {"samples": latent})[0]
    finally:
        if flushing:
            torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    return out["samples"]


def run_node(cls, **inputs):
    """Execute a node class the way the executor does (inference mode); returns its outputs tuple."""
    with torch.inference_mode():
        if hasattr(cls, "define_schema"):  # V3
            return tuple(resolve(cls.execute(**inputs)).args)
        obj = cls()
        return getattr(obj, cls.FUNCTION)(**inputs)


def authors_arg() -> argparse.Namespace:
    """The ``arg`` namespace stored in the authors' ``equ_nv16_vl4_rn1_Bipolar_norm.pth``."""
    return argparse.Namespace(n_vector=[16], vector_length=[4], rot_num=[1], gonlin="Bipolar", channel=3,
                              lgn_stride=4, lgn_kernel_size=21, lgn_padding=10, activate_fn=None)


def save_authors_pth(ae: ModularAutoencoder, path) -> None:
    """An autoencoder in the authors' .pth layout (``lgn_ende.0.conv.*`` + ``arg``)."""
    sd = {"lgn_ende.0.conv." + k.removeprefix("gonlin."): v.clone() for k, v in ae.state_dict().items()}
    sd["lgn_ende.0.conv.eye"] = torch.eye(ae.n_channels)[:, :, None, None]
    torch.save({"arg": authors_arg(), "state_dict": sd}, path)


class FakeServer:
    """What PromptExecutor needs from the server when run in-process."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def execute_prompt(host, prompt: dict, ex=None):
    """Validate and run an API-format prompt in-process; returns the executor (check ``.success``).

    Pass the executor of an earlier run to run again with its caches, as the server does.
    """
    prompt_id = str(uuid.uuid4())
    ok, err, outputs, node_errors = resolve(host.execution.validate_prompt(prompt_id, prompt, None))
    assert ok, (err, node_errors)
    # every key any version reads (0.8 reads lru/ram with defaults; 0.33 also needs ram_inactive):
    # "classic" caching keeps outputs until the graph changes, as the server does by default
    ex = ex or host.execution.PromptExecutor(FakeServer(), cache_type=host.execution.CacheType.CLASSIC,
                                             cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    ex.execute(copy.deepcopy(prompt), prompt_id, {}, outputs)
    return ex


def resolve(value):
    """``value``, or what it resolves to when a host version made the call async (a coroutine)."""
    return asyncio.run(value) if inspect.isawaitable(value) else value


def node_output(ex, node_id: str, index: int):
    """Output ``index`` of an executed node from the executor's output cache (sync or async ``get``)."""
    return resolve(ex.caches.outputs.get(node_id)).outputs[index][0]


# --- full-size checkpoints in the authors' layout (no download) ------------------------------------
SD15_CONTROLNET = {
    "image_size": 32, "in_channels": 4, "model_channels": 320, "hint_channels": 3, "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "num_heads": 8, "context_dim": 768, "use_spatial_transformer": True, "legacy": False,
    "use_linear_in_transformer": False,
}
SDXL_CONTROLNET = {
    "image_size": 32, "in_channels": 4, "model_channels": 320, "hint_channels": 3, "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
    "num_head_channels": 64, "context_dim": 2048, "use_spatial_transformer": True, "legacy": False,
    "use_linear_in_transformer": True, "adm_in_channels": 2816, "num_classes": "sequential",
}


def controlnet_shapes(config: dict) -> dict[str, torch.Size]:
    """Key -> shape of a cldm ControlNet (ComfyUI's ldm layout), built on the meta device."""
    cm = comfy.cldm.cldm.ControlNet(**config, device="meta", operations=comfy.ops.disable_weight_init)
    return {k: v.shape for k, v in cm.state_dict().items()}


def authors_controlnet_ckpt(path, ae: ModularAutoencoder, config: dict = SD15_CONTROLNET, meta: bool = False,
                            seed: int = 0) -> dict[str, torch.Tensor]:
    """Write an SCG ControlNet as the authors' training saves it (a PyTorch Lightning .ckpt).

    ``control_model.*`` in the full layout with the hint block as ``input_hint_block_new.{k+1}``,
    the autoencoder under ``input_hint_block_new.0.lgn_ende.conv.*`` and again under
    ``hypercolumn.lgn_ende.conv.*``, some ``model.*``/``first_stage_model.*`` tensors and
    Lightning's non-tensor entries. The ControlNet weights are fp16 views of one random buffer
    (or meta tensors), so the file stays small. Returns the ControlNet part in ComfyUI's
    layout (what the conversion must produce).
    """
    shapes = controlnet_shapes(config)
    if meta:
        comfy_sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    else:
        # views of one fp16 buffer at spread offsets, an eighth of what they address: loaders refuse
        # files whose tensors address more than 8x what they store (a hostile file's amplification)
        g = torch.Generator().manual_seed(seed)
        total = sum(s.numel() for s in shapes.values())
        buf = (torch.randn(max(total // 7, max(s.numel() for s in shapes.values())), generator=g) * 0.02).half()
        comfy_sd, offset = {}, 0
        for k, s in shapes.items():
            offset = offset if offset + s.numel() <= buf.numel() else 0
            comfy_sd[k] = buf[offset:offset + s.numel()].view(s)
            offset += s.numel()
    sd = {}
    for k, v in comfy_sd.items():
        if k.startswith("input_hint_block."):
            i, rest = k[len("input_hint_block."):].split(".", 1)
            k = f"input_hint_block_new.{int(i) + 1}.{rest}"
        sd["control_model." + k] = v
    factors = {k.removeprefix("gonlin."): v.clone() for k, v in ae.state_dict().items()}
    factors["eye"] = torch.eye(ae.n_channels)[:, :, None, None]
    for prefix in ("control_model.input_hint_block_new.0.lgn_ende.conv.", "control_model.hypercolumn.lgn_ende.conv."):
        sd.update({prefix + k: v.clone() for k, v in factors.items()})
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 4, 3, 3)
    sd["model.diffusion_model.out.2.bias"] = torch.zeros(4)
    sd["first_stage_model.decoder.conv_out.weight"] = torch.zeros(3, 8, 3, 3)
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save({"epoch": 4, "global_step": 147860, "pytorch-lightning_version": "1.5.0", "state_dict": sd,
                "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None}},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-5}]}], "lr_schedulers": []}, path)
    return comfy_sd

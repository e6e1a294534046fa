"""The measurements behind bench/fullsize_bench.py (CPU, one child process a job) and bench/gpu_run.py
(one CUDA process): each job builds its own models, runs, and returns a dict of plain numbers.

* :func:`controlnet_train` - ``train.controlnet.Trainer.step`` (SCG hint, epsilon-loss, backward,
  AdamW) of a ControlNet on an SD1.5-architecture base built with ComfyUI's classes, random weights
  (:mod:`scg_testing.tiny_sd15`: ``sd15`` = the configs the real files load into; ``tiny`` = the test
  models). Recipes: :data:`RECIPES`. Besides the step times it counts the bytes autograd keeps
  for the backward pass (activations; parameters left out) over one step, with
  ``torch.autograd.graph.saved_tensors_hooks``: the device-independent part of the memory model.
* :func:`sampling` - ``comfy.sample.sample`` with a core ``comfy.controlnet.ControlNet`` around
  the same ControlNet weights, the hint either made beforehand (``core``: what HypercolumnExtract
  feeds core's Apply ControlNet) or inside sampling through ``preprocess_image`` (``scg``: what
  SCGControlApply does; the hint is zero-padded to latent x 8 so core prepares it once a run).
* :func:`ae_train` - ``train.autoencoder``'s step (both transform passes, every loss term,
  backward, AdamW) on random crops; FLOPs: see :class:`ConvFlops`.
* :func:`matmul_peak` - the chip's achievable dense matmul rate, for the AE's GFLOP/s next to it.

Weights are random: time and memory do not depend on their values.
"""
from __future__ import annotations

import gc
import math
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
import torch.utils._python_dispatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "tests", "lib")):  # the pack, and the one tiny/full SD1.5 builder
    if _p not in sys.path:
        sys.path.insert(0, _p)

#: ControlNet training recipes. ``authors``: the authors' Lightning code (fp32, no checkpointing,
#: VAE and CLIP every step). ``ours``: checkpointing and cached latents/text (``--precompute``),
#: fp32 (the CPU table). ``ours-bf16``: the CUDA default (bf16 autocast, frozen UNet stored in bf16).
RECIPES = {
    "authors": {"precision": "fp32", "checkpointing": False, "cache": False},
    "ours": {"precision": "fp32", "checkpointing": True, "cache": True},
    "ours-bf16": {"precision": "bf16", "checkpointing": True, "cache": True},
}


def rss_gib() -> float:
    """This process's resident set now, GiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gib() -> float:
    """This process's peak resident set so far (``ru_maxrss``, KiB on Linux), GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_peak(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"cuda_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "cuda_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}


def _host(device: torch.device) -> None:
    from train import sd15

    sd15.import_comfy(None, cpu=device.type != "cuda")


def _spec(name: str) -> dict:
    from scg_testing import tiny_sd15

    return tiny_sd15.SD15_SPEC if name == "sd15" else tiny_sd15.TINY_SPEC


def _images(n: int, res: int, seed: int = 0) -> torch.Tensor:
    """n smooth random images n x 3 x res x res in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, max(2, res // 16), max(2, res // 16), generator=g)
    return F.interpolate(small, size=(res, res), mode="bicubic", align_corners=False).clamp(0, 1)


def _autoencoder():
    from scg_models import ModularAutoencoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ModularAutoencoder()


def param_counts(base, controlnet=None) -> dict:
    """Millions of parameters of each network."""
    nets = {"unet": base.unet, "clip": base.clip.cond_stage_model, "vae": base.vae.first_stage_model}
    if controlnet is not None:
        nets["controlnet"] = controlnet
    return {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in nets.items()}


class SavedBytes:
    """``with SavedBytes(models) as s:`` bytes of the distinct tensors autograd saves for the
    backward pass inside the block, the models' own parameters left out (``s.bytes``)."""

    def __init__(self, *models: torch.nn.Module):
        self.skip = {p.data_ptr() for m in models for p in m.parameters()}
        self.seen: dict[tuple, int] = {}
        self.bytes = 0

    def _pack(self, t: torch.Tensor):
        try:
            ptr = t.untyped_storage().data_ptr()
            key = (t.device.type, ptr)
            if ptr not in self.skip and key not in self.seen:
                self.seen[key] = t.untyped_storage().nbytes()
                self.bytes += self.seen[key]
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, wrappers)
            pass
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def controlnet_train(recipe: str, *, spec: str = "sd15", res: int = 512, batch: int = 1, steps: int = 2,
                     warmup: int = 1, device: str = "cpu") -> dict:
    """Step times and memory of one recipe of :data:`RECIPES` (each step: ``batch`` images at res x res)."""
    from bench.controlnet_train_bench import synthetic_batch
    from scg_testing import tiny_sd15
    from train import sd15
    from train.controlnet import Trainer

    dev = torch.device(device)
    _host(dev)
    cfg = RECIPES[recipe]
    bf16 = cfg["precision"] == "bf16"
    t0 = time.perf_counter()
    base = tiny_sd15.build_base(_spec(spec), seed=0, unet_dtype=torch.bfloat16 if bf16 else torch.float32)
    controlnet = sd15.build_controlnet(base, seed=0)
    build_s = time.perf_counter() - t0
    ae = _autoencoder()
    modules = ae.resolve_modules("HC0")
    n = 2 * batch
    images = _images(n, res)
    captions = [f"a photograph of thing number {i}, detailed" for i in range(n)]
    cached = None
    if cfg["cache"]:  # what --precompute writes once (read from memory here; the loader overlaps disk reads)
        cached = {"latent": sd15.encode_images(base, images), "text": sd15.encode_text(base, captions)}
        import comfy.model_management as mm

        mm.unload_all_models()  # the VAE and CLIP leave the GPU, as while the trainer reads its cache
    trainer = Trainer(base, ae, modules, controlnet, device=dev, precision=cfg["precision"],
                      checkpointing=cfg["checkpointing"], lr=1e-5)
    gc.collect()
    rss_built = rss_gib()

    def batch_at(k):
        return synthetic_batch(k, batch, images, captions, cached)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, losses, saved = [], [], None
    for k in range(warmup + steps):
        _sync(dev)
        t = time.perf_counter()
        if k == 0:  # the first (warm-up) step also counts what autograd keeps for the backward pass
            with SavedBytes(base.unet, controlnet, ae) as s:
                losses.append(trainer.step([batch_at(k)], 1e-5))
            saved = s.bytes
        else:
            losses.append(trainer.step([batch_at(k)], 1e-5))
        _sync(dev)
        times.append(time.perf_counter() - t)
    timed = times[warmup:] or times
    import comfy.ldm.modules.attention as attention

    return {"job": f"controlnet-{recipe}", "recipe": recipe, **cfg, "spec": spec, "res": res, "batch": batch,
            "attention": getattr(attention.optimized_attention, "__name__", "?"), "threads": torch.get_num_threads(),
            "device": str(dev), "build_s": build_s, "step_times_s": times, "s_per_step": sum(timed) / len(timed),
            "params_m": param_counts(base, controlnet), "rss_built_gib": rss_built,
            "saved_for_backward_gib": saved / 2**30, "loss_first": losses[0], "loss_last": losses[-1],
            "peak_rss_gib": peak_rss_gib(), **_cuda_peak(dev)}


def sampling(path: str, *, spec: str = "sd15", res: int = 512, steps: int = 3, cfg: float = 7.0,
             device: str = "cpu") -> dict:
    """One ``steps``-step sampling run (euler, normal, CFG) at res x res with an SCG ControlNet.

    ``path``: ``core`` (hint made by ``ae.hint`` beforehand, fed to core's ControlNet) or ``scg``
    (``ae.hint`` run by core's hint preparation inside sampling). Same weights in both.
    """
    from scg_testing import tiny_sd15
    from train import sd15

    dev = torch.device(device)
    _host(dev)
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.sample

    unet_dtype = torch.float16 if dev.type == "cuda" else torch.float32  # ComfyUI's own choice for SD1.5
    base = tiny_sd15.build_base(_spec(spec), seed=0, unet_dtype=unet_dtype)
    control_model = sd15.build_controlnet(base, seed=0)
    ae = _autoencoder().to(dev)
    modules = ae.resolve_modules("HC0")
    image = _images(1, res)
    context = torch.randn(1, 77, base.context_dim, generator=torch.Generator().manual_seed(1))
    uncond = torch.zeros_like(context)
    gc.collect()
    rss_built = rss_gib()
    peak_before = peak_rss_gib()

    def hint(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ae.hint(x.to(dev).float(), modules)

    extract_s, ae_peak_gib = 0.0, None
    cn = comfy.controlnet.ControlNet(control_model, load_device=mm.get_torch_device(), manual_cast_dtype=None)
    if path == "core":
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t = time.perf_counter()
        cond_image = hint(image).float().cpu()  # HypercolumnExtract's output; core resizes it to latent x 8
        _sync(dev)
        extract_s = time.perf_counter() - t
        ae_peak_gib = (torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda"
                       else peak_rss_gib() - peak_before)
    elif path == "scg":
        def prepare(x):  # core calls this once per run and latent size; padded so its cache keeps it
            h = hint(x)
            return F.pad(h, (0, x.shape[-1] - h.shape[-1], 0, x.shape[-2] - h.shape[-2]))

        cn.preprocess_image = prepare
        cond_image = image
    else:
        raise ValueError(f"path {path!r}: core or scg")
    cn = cn.copy().set_cond_hint(cond_image, 1.0, (0.0, 1.0))
    positive = [[context, {"control": cn, "control_apply_to_uncond": False}]]
    negative = [[uncond, {"control": cn, "control_apply_to_uncond": False}]]
    latent = torch.zeros(1, 4, res // 8, res // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(2):  # the first run loads the models (ComfyUI's management), the second is timed
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        _sync(dev)
        t = time.perf_counter()
        comfy.sample.sample(base.patcher, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                            seed=0, disable_pbar=True)
        _sync(dev)
        times.append(time.perf_counter() - t)
    return {"job": f"sampling-{path}", "path": path, "spec": spec, "res": res, "steps": steps, "cfg": cfg,
            "device": str(dev), "sample_s": times[-1], "first_sample_s": times[0], "extract_s": extract_s,
            "ae_extract_peak_gib": ae_peak_gib, "rss_built_gib": rss_built, "peak_rss_gib": peak_rss_gib(),
            **_cuda_peak(dev)}


class ConvFlops(torch.utils._python_dispatch.TorchDispatchMode):
    """Convolution FLOPs counted from the shapes of every ``aten.convolution`` (forward) and
    ``aten.convolution_backward`` the block runs.

    One multiply-add = 2 FLOPs. Forward: 2 x N x C_out x prod(out spatial) x C_in/groups x prod(kernel)
    (transposed: input and output roles swapped). Backward: the same count for each of the input
    gradient and the weight gradient that autograd asks for (``output_mask``); bias terms ignored.
    """

    def __init__(self):
        super().__init__()
        self.forward = self.backward = 0

    @staticmethod
    def _macs(x_shape, w_shape, out_shape, transposed: bool, groups: int) -> int:
        if transposed:  # weight: C_in x C_out/groups x k...; every input pixel scatters a kernel
            return x_shape[0] * w_shape[0] * math.prod(x_shape[2:]) * w_shape[1] * math.prod(w_shape[2:])
        return out_shape[0] * w_shape[0] * math.prod(out_shape[2:]) * w_shape[1] * math.prod(w_shape[2:])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            x, w, transposed, groups = args[0], args[1], args[6], args[8]
            self.forward += 2 * self._macs(x.shape, w.shape, out.shape, transposed, groups)
        elif func is torch.ops.aten.convolution_backward.default:
            grad_out, x, w, transposed, groups, mask = args[0], args[1], args[2], args[7], args[9], args[10]
            flops = 2 * self._macs(x.shape, w.shape, grad_out.shape, transposed, groups)
            self.backward += flops * (int(bool(mask[0])) + int(bool(mask[1])))
        return out

    @property
    def total(self) -> int:
        return self.forward + self.backward


def ae_train(*, batch: int = 64, crop: int = 128, precision: str = "fp32", steps: int = 2, warmup: int = 1,
             device: str = "cpu") -> dict:
    """images/s and achieved conv GFLOP/s of the autoencoder trainer's step (the paper's recipe)."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.train_bench import make_inputs
    from train.autoencoder import Recipe, make_trainee

    dev = torch.device(device)
    recipe = Recipe(batch_size=batch, crop=crop)
    torch.manual_seed(0)
    trainee = make_trainee(recipe).to(dev)
    opt = torch.optim.AdamW(trainee.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    x, transforms = make_inputs(batch, crop, dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = trainee(x, transforms)
        opt.zero_grad(set_to_none=True)
        out["total"].backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(dev)
    conv = ConvFlops()
    with FlopCounterMode(display=False) as counter, conv:
        step()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        _sync(dev)
        times.append(time.perf_counter() - t)
    s = sum(times) / len(times)
    return {"job": f"autoencoder-{batch}x{crop}-{precision}", "batch": batch, "crop": crop, "precision": precision,
            "device": str(dev), "step_times_s": times, "s_per_step": s, "img_s": batch / s,
            "conv_gflop_per_step": conv.total / 1e9, "conv_gflop_forward": conv.forward / 1e9,
            "all_gflop_per_step_flop_counter": counter.get_total_flops() / 1e9,
            "conv_gflop_s": conv.total / s / 1e9, "peak_rss_gib": peak_rss_gib(), **_cuda_peak(dev)}


def matmul_peak(*, n: int = 4096, dtype: str = "fp32", reps: int = 5, device: str = "cpu") -> dict:
    """Best-of-``reps`` GFLOP/s of an n x n x n matmul (2 n^3 FLOPs): what the chip achieves densely."""
    dev = torch.device(device)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, dt)
    b = torch.randn(n, n, generator=g).to(dev, dt)
    a @ b
    _sync(dev)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return {"job": f"matmul-{dtype}", "n": n, "dtype": dtype, "device": str(dev), "gflop_s": 2 * n**3 / best / 1e9,
            "tf32": bool(dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
            "peak_rss_gib": peak_rss_gib()}


JOBS = {"controlnet": controlnet_train, "sampling": sampling, "autoencoder": ae_train, "matmul": matmul_peak}

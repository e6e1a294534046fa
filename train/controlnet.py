"""Train an SCG ControlNet for SD1.5 on ComfyUI's own model code (pattern completion).

    python -m train.controlnet --base v1-5-pruned-emaonly.safetensors --autoencoder scg.safetensors \\
        --modules HC0 --data DIR [--captions captions.json] --out models/controlnet/scg_hc0.safetensors

The hint of every training image is the image's own SCG hint for ``--modules``, made by the
frozen autoencoder at the training resolution exactly as the inference nodes make it
(``ae.hint(image fitted to the generation size)``, raw, not resized). The SD1.5 UNet, VAE and
CLIP are loaded, frozen, with ComfyUI's loaders; the ControlNet is ComfyUI's own class,
initialised from the UNet's encoder with zero convolutions at zero. Objective: SD1.5's
ε-prediction under its own noise schedule (``model_sampling`` of the loaded model).

Several GPUs or machines: ``torchrun --nproc_per_node N -m train.controlnet ...`` (DDP; rank 0
writes). ``--resume`` continues exactly (weights, optimiser, step, sample stream, RNG). See
docs/controlnet_training.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from scg_models.errors import SCGError

log = logging.getLogger("scg.train")
STATE_VERSION = 1
#: noise levels of the fixed-noise evaluation loss (timesteps of SD1.5's 1000-step schedule)
EVAL_TIMESTEPS = (50, 250, 500, 750, 950)


# --- distributed (train/distributed.py: torchrun processes, NCCL on GPUs, gloo on the CPU) -----
class Dist:
    """This process of a ``torchrun`` job (or the only one), over :mod:`train.distributed`."""

    def __init__(self, cpu: bool = False):
        from . import distributed

        self._d = distributed.init("cpu" if cpu else "auto", timeout_s=2 * 3600)
        self.world, self.rank, self.device = self._d.world_size, self._d.rank, self._d.device
        self.cuda = self.device.type == "cuda"

    @property
    def main(self) -> bool:
        return self._d.is_main

    def barrier(self) -> None:
        from . import distributed

        distributed.barrier(self._d)

    def sum(self, values: list[float]) -> list[float]:
        from . import distributed

        out = distributed.mean_dict({i: float(v) for i, v in enumerate(values)}, self._d)
        return [out[i] * self.world for i in range(len(values))]

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        from . import distributed

        distributed.shutdown(self._d)


# --- small helpers ----------------------------------------------------------------------
def _precision(name: str, dist: Dist) -> str:
    if name == "auto":
        return "bf16" if dist.cuda and torch.cuda.is_bf16_supported() else "fp32"
    return name


def autoencoder_sha256(ae) -> str:
    """Identity of an autoencoder: its config and weights."""
    h = hashlib.sha256(json.dumps({k: v for k, v in ae.config.to_dict().items() if k != "info"},
                                  sort_keys=True).encode())
    for k, v in sorted(ae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _file_identity(path: str) -> dict:
    st = os.stat(path)
    return {"name": os.path.basename(path), "size": st.st_size}


def state_path(out: str) -> str:
    """The resumable training state next to the output file: ``NAME.train-state.pt``."""
    p = Path(out)
    return str(p.with_name(p.stem + ".train-state.pt"))


def _atomic_torch_save(obj, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def lr_at(step: int, lr: float, warmup: int) -> float:
    """Constant learning rate (the authors'), after an optional linear warm-up."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def sample_generator(seed: int, position: int) -> torch.Generator:
    """The RNG of one sample position: noise, timestep and caption dropout depend only on
    (seed, position), never on the process or on how many ran before (exact resume, DDP ≡ 1 GPU)."""
    return torch.Generator().manual_seed((int(seed) % 2**32) * 2**31 + int(position) % 2**31)


# --- the step ---------------------------------------------------------------------------
class Trainer:
    """One ControlNet being trained against a frozen SD1.5 base.

    ``base``: :class:`train.sd15.Base`; ``ae``: the frozen SCG autoencoder; ``modules``: module
    indices of the hint; ``controlnet``: the trainable ``comfy.cldm.cldm.ControlNet``. Batches are
    dicts from :func:`train.cn_data.collate` (``image`` B×3×R×R in [0, 1], ``position``, and
    either ``caption`` strings or cached ``latent``/``text``).
    """

    def __init__(self, base, ae, modules, controlnet, *, device, precision="fp32", checkpointing=False,
                 lr=1e-5, weight_decay=1e-2, seed=0, caption_dropout=0.0, max_grad_norm=0.0, ddp=False):
        from . import sd15

        self.base, self.modules, self.device = base, list(modules), torch.device(device)
        self.precision, self.seed, self.caption_dropout = precision, int(seed), float(caption_dropout)
        self.max_grad_norm = float(max_grad_norm)
        self.ae = ae.to(self.device).float().eval().requires_grad_(False)
        base.model.to(self.device).requires_grad_(False).eval()
        self.unet, self.model_sampling = base.unet, base.model.model_sampling
        self.controlnet = controlnet.to(self.device).float().train().requires_grad_(True)
        if checkpointing:
            sd15.enable_checkpointing(self.unet, self.controlnet)
        else:
            sd15.disable_checkpointing(self.unet, self.controlnet)
        self.net = self.controlnet
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.controlnet, device_ids=[self.device.index]
                                               if self.device.type == "cuda" else None,
                                               gradient_as_bucket_view=True)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(self.controlnet.parameters(), lr=lr, weight_decay=weight_decay, **fused)
        self._empty = None

    # inputs ----------------------------------------------------------------------------
    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def hint(self, images: torch.Tensor) -> torch.Tensor:
        """The SCG hint, in fp32 outside autocast: exactly ``ae.hint`` as at inference."""
        with torch.autocast(self.device.type, enabled=False):
            return self.ae.hint(images.to(self.device, non_blocking=True), self.modules).float()

    def empty_text(self) -> torch.Tensor:
        if self._empty is None:
            from . import sd15

            self._empty = sd15.encode_text(self.base, [""])[0].to(self.device)
        return self._empty

    def inputs(self, batch: dict):
        """Clean latents, text conditioning and hint on the device, plus per-sample randomness."""
        from . import sd15

        if "latent" in batch:
            latent = batch["latent"].to(self.device, non_blocking=True).float()
            context = batch["text"].to(self.device, non_blocking=True).float()
        else:
            latent = sd15.encode_images(self.base, batch["image"]).to(self.device)
            context = sd15.encode_text(self.base, batch["caption"]).to(self.device)
        hint = self.hint(batch["image"])
        noise, t, drop = [], [], []
        for p in batch["position"].tolist():
            g = sample_generator(self.seed, p)
            noise.append(torch.randn(latent.shape[1:], generator=g))
            t.append(int(torch.randint(0, len(self.model_sampling.sigmas), (1,), generator=g)))
            drop.append(float(torch.rand((), generator=g)) < self.caption_dropout)
        if any(drop):
            context = torch.where(torch.tensor(drop, device=self.device).view(-1, 1, 1), self.empty_text(), context)
        noise = torch.stack(noise).to(self.device)
        return latent, context, hint, noise, torch.tensor(t, device=self.device)

    def loss(self, latent, context, hint, noise, timesteps, net=None) -> torch.Tensor:
        from . import sd15

        sigma = self.model_sampling.sigmas.to(self.device)[timesteps]
        x_t = self.model_sampling.noise_scaling(sigma, noise, latent)
        with self.autocast():
            eps = sd15.predict_noise(self.unet, net or self.net, self.model_sampling, x_t, sigma, context, hint)
        return F.mse_loss(eps.float(), noise.float())

    # one optimiser step ----------------------------------------------------------------
    def step(self, batches: list[dict], lr: float) -> float:
        """Forward/backward over ``batches`` (gradient accumulation), then one AdamW step."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        n = len(batches)
        for i in range(n):
            inputs = self.inputs(batches[i])
            sync = i == n - 1 or self.net is self.controlnet
            with contextlib.nullcontext() if sync else self.net.no_sync():
                loss = self.loss(*inputs)
                (loss / n).backward()
            total += float(loss.detach()) / n
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.controlnet.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    @torch.no_grad()
    def eval_loss(self, batch: dict) -> float:
        """Fixed-noise loss of ``batch`` at :data:`EVAL_TIMESTEPS` (comparable between steps)."""
        latent, context, hint, _, _ = self.inputs(batch)
        total = 0.0
        self.controlnet.eval()
        for t in EVAL_TIMESTEPS:
            g = torch.Generator().manual_seed(self.seed + 7919 * t)
            noise = torch.randn(latent.shape, generator=g).to(self.device)
            ts = torch.full((latent.shape[0],), t, device=self.device)
            total += float(self.loss(latent, context, hint, noise, ts, net=self.controlnet))
        self.controlnet.train()
        return total / len(EVAL_TIMESTEPS)


# --- the command line -------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m train.controlnet", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Details, data layout and cost-cutting options: docs/controlnet_training.md")
    g = ap.add_argument_group("what to train")
    g.add_argument("--base", required=True, help="SD1.5 checkpoint (.safetensors/.ckpt with UNet, CLIP and VAE)")
    g.add_argument("--autoencoder", required=True, help="SCG autoencoder file (ours, the authors' .pth or .ckpt)")
    g.add_argument("--modules", required=True, help="module selection of the hint: HC0, HC2+HC3, 0,1,4 ...")
    g.add_argument("--data", required=True, help="folder of images (with same-named .txt captions)")
    g.add_argument("--captions", help="COCO-style captions JSON (file_name relative to --data)")
    g.add_argument("--init-controlnet", metavar="FILE",
                   help="fine-tune: start from this SD1.5 ControlNet (ours, the authors' .ckpt, or any ldm-layout "
                        "ControlNet) instead of the UNet's encoder")
    g.add_argument("--out", required=True, help="output ControlNet .safetensors (e.g. models/controlnet/NAME.safetensors)")
    g = ap.add_argument_group("recipe (defaults: the authors')")
    g.add_argument("--steps", type=int, help="optimiser steps (default: 5 epochs of the data, as the authors)")
    g.add_argument("--batch-size", type=int, default=4, help="images per process and micro-step")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimiser step")
    g.add_argument("--lr", type=float, default=1e-5)
    g.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    g.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    g.add_argument("--max-grad-norm", type=float, default=0.0, help="gradient clipping (0: off)")
    g.add_argument("--resolution", type=int, default=512, help="square training size in pixels")
    g.add_argument("--caption-dropout", type=float, default=0.0, help="probability of training with the empty prompt")
    g.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("cost")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast on CUDA GPUs that support it, else fp32 (the authors)")
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute block activations in the backward pass (less memory, ~25%% more compute)")
    g.add_argument("--precompute", action="store_true",
                   help="encode latents and text embeddings once into a cache on disk, then train from it")
    g.add_argument("--cache-dir", help="cache folder (default: .scg-cache/ next to --out)")
    g.add_argument("--workers", type=int, help="data-loading processes per GPU (default: min(8, CPUs/GPUs))")
    g.add_argument("--deterministic", action="store_true",
                   help="CUDA: deterministic kernels (slower), so a resumed run repeats bit for bit as on the CPU")
    g.add_argument("--save-dtype", choices=["fp16", "bf16", "fp32"], default="fp16",
                   help="dtype of the output ControlNet weights (the resumable state is always fp32)")
    g = ap.add_argument_group("checkpoints, progress, samples")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="STATE",
                   help="continue from the training state (default: NAME.train-state.pt next to --out)")
    g.add_argument("--save-every", type=int, default=1000, help="write the ControlNet and the state every N steps")
    g.add_argument("--stop-after", type=int, help="stop (saving) after this many steps in this run")
    g.add_argument("--log-every", type=int, default=10, help="JSON-lines log NAME.log.jsonl every N steps")
    g.add_argument("--eval-every", type=int, help="fixed-noise loss every N steps (default: --save-every)")
    g.add_argument("--eval-images", type=int, default=8, help="images of the fixed-noise loss")
    g.add_argument("--samples", type=int, default=4, help="held-out images for the sample sheets (0: none)")
    g.add_argument("--sample-every", type=int, default=1000, help="sample sheet NAME.samples-STEP.png every N steps")
    g.add_argument("--sample-steps", type=int, default=20)
    g.add_argument("--sample-cfg", type=float, default=7.5)
    g.add_argument("--sampler", default="euler", help="a ComfyUI sampler name")
    g.add_argument("--scheduler", default="normal", help="a ComfyUI scheduler name")
    g = ap.add_argument_group("host")
    g.add_argument("--comfyui", help="ComfyUI checkout (default: $COMFYUI_PATH, the ComfyUI holding this folder, "
                                     "~/comfy/ComfyUI)")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if CUDA is available")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _check_args(a) -> None:
    for name in ("batch_size", "grad_accum", "resolution", "save_every", "log_every"):
        if getattr(a, name) < 1:
            raise SCGError(f"--{name.replace('_', '-')} must be ≥ 1")
    if a.steps is not None and a.steps < 1:
        raise SCGError("--steps must be ≥ 1")
    if not 0 <= a.caption_dropout <= 1:
        raise SCGError("--caption-dropout must be in [0, 1]")
    if a.lr <= 0:
        raise SCGError("--lr must be > 0")
    if not a.out.endswith(".safetensors"):
        raise SCGError("--out must end in .safetensors (ComfyUI's ControlNet folder format)")


# --- precompute -------------------------------------------------------------------------
class _Decode(torch.utils.data.Dataset):
    def __init__(self, index, items, resolution):
        self.index, self.items, self.resolution = index, items, resolution

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        from .cn_data import load_image

        i = self.items[k]
        try:
            return i, load_image(self.index.root / self.index.paths[i], self.resolution), ""
        except Exception as e:
            return i, None, f"{type(e).__name__}: {e}"


def precompute(base, index, resolution: int, folder: str, key: dict, dist: Dist, batch: int, workers: int):
    """Encode every image's latent and every distinct caption's embedding once (all ranks share
    the work); reuse the cache when its key matches. Returns (cache, {path: reason} of failures)."""
    import numpy as np

    from . import sd15
    from .cn_data import LatentCache

    cache = LatentCache(folder)
    meta = cache.meta()
    if meta is not None and meta.get("key") == key:
        ok = cache.ok()
        return cache, {index.paths[i]: "could not be decoded (at precompute)" for i in np.flatnonzero(ok == 0)}
    texts = [""] + sorted(set(index.captions) - {""})
    row = {c: r for r, c in enumerate(texts)}
    f = int(base.vae.spacial_compression_encode())  # 8 for SD1.5
    if dist.main:
        cache.create(len(index), (4, resolution // f, resolution // f), len(texts), (77, base.context_dim))
        cache.write("text_row", slice(None), np.array([row[c] for c in index.captions], dtype=np.int32))
    dist.barrier()
    mine = list(range(dist.rank, len(texts), dist.world))
    for s in range(0, len(mine), 64):
        rows = mine[s:s + 64]
        cache.write("text", rows, sd15.encode_text(base, [texts[r] for r in rows]).numpy().astype(np.float16))
    items = list(range(dist.rank, len(index), dist.world))
    loader = torch.utils.data.DataLoader(_Decode(index, items, resolution), batch_size=batch, num_workers=workers,
                                         collate_fn=list)
    failed = {}
    for chunk in _progress(loader, dist, "precompute", len(loader)):
        good = [(i, x) for i, x, _ in chunk if x is not None]
        for i, _, err in chunk:
            if err:
                failed[index.paths[i]] = err
        cache.write("ok", [i for i, _, _ in chunk], np.array([x is not None for _, x, _ in chunk], dtype=np.uint8))
        if good:
            lat = sd15.encode_images(base, torch.stack([x for _, x in good]))
            cache.write("latents", [i for i, _ in good], lat.numpy().astype(np.float16))
    all_failed = {}
    for d in dist.gather(failed):
        all_failed.update(d)
    dist.barrier()
    if dist.main:
        cache.finish({"key": key, "version": 1, "images": len(index), "texts": len(texts)})
    dist.barrier()
    return cache, all_failed


def _progress(it, dist, desc, total, initial=0, disable=False):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, desc=desc, total=total, initial=initial, disable=disable or not dist.main, dynamic_ncols=True,
                unit="step" if desc == "train" else "batch", mininterval=1.0)


# --- the run ----------------------------------------------------------------------------
class _Stop:
    """SIGINT/SIGTERM: finish the current step, save, exit (a second Ctrl-C aborts)."""

    def __init__(self):
        self.requested, self._old = False, {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step (saving the state); "
              "Ctrl-C again to abort", file=sys.stderr)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _holdout(n: int, k: int) -> list[int]:
    if k <= 0:
        return []
    if k >= n:
        raise SCGError(f"--samples {k}: needs more than {k} images (found {n}); lower --samples or use 0")
    return sorted({(i * n) // k for i in range(k)})


def run(a) -> dict:
    """Train as the parsed command line ``a`` says. Returns a summary dict (rank 0's view)."""
    _check_args(a)
    if a.deterministic:  # before cuBLAS starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    dist = Dist(cpu=a.cpu)
    try:
        return _run(a, dist)
    finally:
        dist.close()


def _run(a, dist: Dist) -> dict:
    from . import sd15
    from .cn_data import StepBatches, StepOrder, TrainSet, collate, scan

    t_start = time.time()
    sd15.import_comfy(a.comfyui, cpu=not dist.cuda)
    from scg_models import formats, load_autoencoder

    precision = _precision(a.precision, dist)
    device = dist.device
    if dist.cuda:  # fixed shapes: let cuDNN pick its fastest kernels, unless bitwise repeatability is asked for
        torch.backends.cudnn.benchmark = not a.deterministic
        if a.deterministic:
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)
    if dist.main:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    # the autoencoder and the module selection
    ae = load_autoencoder(a.autoencoder)
    modules = ae.resolve_modules(a.modules)
    hint_hw = ae.output_size(a.resolution, a.resolution)
    # the base, frozen (refuses anything but SD1.5 before building models)
    # bf16 training keeps the frozen UNet's weights in bf16 on CUDA (half the memory; CUDA autocast runs
    # norms in fp32). CPU autocast has no fp32 policy for group_norm, so on the CPU they stay fp32.
    unet_dtype = torch.bfloat16 if precision == "bf16" and dist.cuda else torch.float32
    base = sd15.load_base(a.base, unet_dtype=unet_dtype)
    if a.resolution % base.latent_factor:
        raise SCGError(f"--resolution {a.resolution}: must be a multiple of {base.latent_factor} for this UNet")
    controlnet = sd15.build_controlnet(base, seed=a.seed)
    init_from = None
    if a.init_controlnet:  # fine-tune: start from an existing ControlNet instead of the UNet's encoder
        start = formats.load_controlnet_file(a.init_controlnet).state_dict
        own = controlnet.state_dict()
        bad = sorted(set(own) ^ set(start)) + [k for k in own if k in start and own[k].shape != start[k].shape]
        if bad:
            raise SCGError(f"--init-controlnet: {a.init_controlnet} does not fit this base's ControlNet "
                           f"(first mismatching key: {bad[0]})")
        controlnet.load_state_dict({k: v.float() for k, v in start.items()})
        init_from = _file_identity(a.init_controlnet)
    latent_hw = a.resolution // 8
    if sd15.hint_block_size(hint_hw, controlnet) != (latent_hw, latent_hw):
        raise SCGError(f"the autoencoder's hint at {a.resolution}px is {hint_hw[0]}×{hint_hw[1]}; the ControlNet's "
                       f"hint block turns that into {sd15.hint_block_size(hint_hw, controlnet)}, not the latent size "
                       f"{latent_hw}×{latent_hw}; pick another --resolution")
    # data
    index = scan(a.data, a.captions, check=True) if dist.main else None
    index = dist.broadcast(index)  # every rank trains on rank 0's view of the folder
    workers = a.workers if a.workers is not None else min(8, max(1, (os.cpu_count() or 2) // max(1, dist.world)))
    skipped = dict(index.skipped)
    cache = None
    if a.precompute:
        folder = a.cache_dir or str(Path(a.out).resolve().parent / ".scg-cache" / Path(a.out).stem)
        key = {"base": _file_identity(a.base), "data": index.fingerprint(), "resolution": a.resolution,
               "version": 1}
        cache, failed = precompute(base, index, a.resolution, folder, key, dist, a.batch_size, workers)
        skipped.update(failed)
    readable = [i for i, p in enumerate(index.paths) if p not in skipped]
    hold = [readable[k] for k in _holdout(len(readable), a.samples)]
    usable = [i for i in readable if i not in set(hold)]
    order = StepOrder(len(usable), a.seed)
    per_step = a.batch_size * a.grad_accum * dist.world
    steps = a.steps or math.ceil(5 * len(usable) / per_step)
    # the recipe: what must match to resume exactly
    ae_sha = autoencoder_sha256(ae)
    recipe = {"base": _file_identity(a.base), "autoencoder": ae_sha, "modules": modules, "resolution": a.resolution,
              "batch_size": a.batch_size, "grad_accum": a.grad_accum, "world": dist.world, "seed": a.seed,
              "lr": a.lr, "warmup": a.warmup, "weight_decay": a.weight_decay, "max_grad_norm": a.max_grad_norm,
              "precision": precision, "caption_dropout": a.caption_dropout, "data": index.fingerprint(),
              "samples": a.samples, "precompute": bool(a.precompute), "init": init_from}
    trainer = Trainer(base, ae, modules, controlnet, device=device, precision=precision,
                      checkpointing=a.gradient_checkpointing, lr=a.lr, weight_decay=a.weight_decay, seed=a.seed,
                      caption_dropout=a.caption_dropout, max_grad_norm=a.max_grad_norm, ddp=dist.world > 1)
    # resume
    step, spath = 0, state_path(a.out)
    if a.resume is not None:
        spath = a.resume or spath
        if not os.path.isfile(spath):
            raise SCGError(f"--resume: no training state at {spath}")
        state = torch.load(spath, map_location="cpu", weights_only=True)
        if state.get("version") != STATE_VERSION:
            raise SCGError(f"--resume: {spath} has state version {state.get('version')}, expected {STATE_VERSION}")
        diff = {k: (state["recipe"].get(k), v) for k, v in recipe.items() if state["recipe"].get(k) != v}
        if diff:
            raise SCGError("--resume: the run differs from the saved one, so it cannot continue exactly: "
                           + "; ".join(f"{k}: saved {o!r}, now {n!r}" for k, (o, n) in diff.items()))
        controlnet.load_state_dict(state["controlnet"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        rng = state["rng"][dist.rank]
        torch.set_rng_state(rng["cpu"])
        if dist.cuda and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"])
        for p, reason in state.get("skipped", {}).items():
            skipped.setdefault(p, reason)
        del state
        if dist.main:
            print(f"resumed from {spath} at step {step}", file=sys.stderr)
    elif dist.main and os.path.isfile(spath):
        print(f"note: starting over; {spath} exists and will be replaced (--resume continues it)", file=sys.stderr)
    stop_at = steps if a.stop_after is None else min(steps, step + a.stop_after)

    dataset = TrainSet(index, usable, a.resolution, cache)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(order, a.batch_size, dist.world, dist.rank, step * a.grad_accum,
                                           stop_at * a.grad_accum),
        num_workers=workers, collate_fn=collate, pin_memory=dist.cuda, persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None)
    log_path = str(Path(a.out).with_name(Path(a.out).stem + ".log.jsonl"))
    if a.resume is None and dist.main and os.path.isfile(log_path):
        os.unlink(log_path)  # a fresh run gets a fresh log; a resumed one appends
    eval_every = a.eval_every or a.save_every
    eval_batch = collate([TrainSet(index, usable, a.resolution, cache)[(0, i)]
                          for i in range(min(a.eval_images, len(usable)))]) if a.eval_images > 0 else None
    sample_batch = (collate([TrainSet(index, hold, a.resolution, None)[(0, i)] for i in range(len(hold))])
                    if hold else None)

    def logj(entry):
        if dist.main:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")

    def evaluate():
        if eval_batch is None:
            return None
        value = trainer.eval_loss(eval_batch) if dist.main else None
        logj({"step": step, "eval_loss": value})
        dist.barrier()
        return value

    def samples_sheet():
        if sample_batch is None or not dist.main:
            dist.barrier()
            return None
        path = str(Path(a.out).with_name(f"{Path(a.out).stem}.samples-{step:08d}.png"))
        write_sheet(trainer, sample_batch, path, a)
        dist.barrier()
        return path

    def save():
        local_skipped = dict(skipped)
        rngs = dist.gather({"cpu": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state() if dist.cuda else None})
        all_skipped = {}
        for d in dist.gather(local_skipped):
            all_skipped.update(d)
        skipped.update(all_skipped)
        if dist.main:
            info = {"trainer": "scg train.controlnet", "modules": modules, "selection": a.modules,
                    "autoencoder": {"file": os.path.basename(a.autoencoder), "sha256": ae_sha},
                    "hint": {"resolution": a.resolution, "size": list(hint_hw),
                             "how": "ae.hint(image centre-cropped and resized to the generation size), raw, "
                                    "fed to the hint block without resizing"},
                    "base": os.path.basename(a.base), "steps": step, "images": len(usable),
                    "init": os.path.basename(a.init_controlnet) if a.init_controlnet else "unet-encoder",
                    "batch_size": a.batch_size, "grad_accum": a.grad_accum, "world_size": dist.world,
                    "lr": a.lr, "precision": precision, "caption_dropout": a.caption_dropout,
                    "captions": index.caption_source}
            cn = formats.ControlNetFile({k: v for k, v in controlnet.state_dict().items()}, ae, {})
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.save_dtype]
            formats.save_controlnet(cn, a.out, dtype=dtype, info=info)
            _atomic_torch_save({"version": STATE_VERSION, "step": step, "recipe": recipe,
                                "controlnet": controlnet.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                                "rng": rngs, "skipped": dict(skipped)}, spath)
        dist.barrier()

    if dist.main:
        n_skip = len(skipped)
        print(f"SCG ControlNet: {len(usable)} training images ({index.captioned} captioned from "
              f"{index.caption_source}; {len(hold)} held out for samples; {n_skip} skipped as unreadable), modules "
              f"{a.modules} = {modules}, hint {hint_hw[0]}×{hint_hw[1]} at {a.resolution}px, {precision}, "
              f"checkpointing {'on' if a.gradient_checkpointing else 'off'}, "
              f"{'cached latents' if cache is not None else 'latents encoded per step'}, {dist.world} process(es) × "
              f"batch {a.batch_size} × accum {a.grad_accum}, steps {step}→{stop_at} of {steps}", file=sys.stderr)
        logj({"event": "start", "step": step, "steps": steps, "images": len(usable), "skipped": n_skip,
              "precision": precision, "world": dist.world})
    first_eval = evaluate() if step == 0 else None
    losses, t_log, ema = [], time.time(), None
    it = iter(loader)
    bar = _progress(range(step, stop_at), dist, "train", steps, initial=step, disable=a.no_progress)
    with _Stop() as stop:
        for _ in bar:
            batches = [next(it) for _ in range(a.grad_accum)]
            for b in batches:
                for rel, reason in b["skipped"]:
                    if rel not in skipped:
                        skipped[rel] = reason
                        log.warning("skipped unreadable image %s: %s", rel, reason)
            loss = trainer.step(batches, lr_at(step, a.lr, a.warmup))
            step += 1
            total, stop_votes = dist.sum([loss, float(stop.requested)])
            loss = total / dist.world
            ema = loss if ema is None else 0.98 * ema + 0.02 * loss
            losses.append(loss)
            if dist.main and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr_at(step - 1, a.lr, a.warmup):.2e}", refresh=False)
            if step % a.log_every == 0 or step == stop_at or stop_votes > 0:
                now = time.time()
                entry = {"step": step, "loss": sum(losses) / len(losses), "lr": lr_at(step - 1, a.lr, a.warmup),
                         "it_s": len(losses) / max(now - t_log, 1e-9)}
                if dist.cuda:
                    entry["max_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                logj(entry)
                losses, t_log = [], now
            if step % eval_every == 0 and step != stop_at:
                evaluate()
            if a.sample_every > 0 and step % a.sample_every == 0 and step != stop_at:
                samples_sheet()
            if stop_votes > 0:
                break
            if step % a.save_every == 0 and step != stop_at:
                save()
    if hasattr(bar, "close"):
        bar.close()
    save()
    last_eval = evaluate()
    sheet = samples_sheet() if a.sample_every > 0 else None
    summary = {"step": step, "steps": steps, "done": step >= steps, "out": a.out, "state": spath,
               "skipped": len(skipped), "skipped_files": sorted(skipped), "images": len(usable),
               "first_eval_loss": first_eval, "last_eval_loss": last_eval, "sheet": sheet,
               "seconds": time.time() - t_start}
    if dist.main:
        logj({"event": "end", **{k: v for k, v in summary.items() if k != "skipped_files"}})
        print(f"{'finished' if step >= steps else 'stopped'} at step {step}/{steps}: wrote {a.out} and {spath}"
              + (f"; skipped {len(skipped)} unreadable image(s)" if skipped else ""), file=sys.stderr)
    return summary


@torch.no_grad()
def write_sheet(trainer: Trainer, batch: dict, path: str, a) -> None:
    """One PNG: per held-out image a row of [image, hint preview, sample] with ComfyUI's sampler."""
    import numpy as np
    from PIL import Image

    from scg_models import minmax

    from . import sd15

    base, images = trainer.base, batch["image"]
    context = sd15.encode_text(base, batch["caption"])
    uncond = sd15.encode_text(base, [""] * len(batch["caption"]))
    import comfy.model_management as mm

    patcher = base.patcher.clone()
    patcher.offload_device = trainer.device  # ComfyUI may "unload" it after sampling: keep it where training needs it
    sampling_base = dataclasses.replace(base, patcher=patcher)

    def hint_fn(x):
        return trainer.ae.hint(x.to(trainer.device), trainer.modules)

    with torch.autocast(trainer.device.type, enabled=False):
        out = sd15.sample(sampling_base, trainer.controlnet, images, hint_fn, context, uncond,
                          steps=a.sample_steps, cfg=a.sample_cfg, sampler=a.sampler, scheduler=a.scheduler,
                          seed=a.seed, keep_on=trainer.device)
        prev = minmax(trainer.hint(images)).cpu()
    mm.soft_empty_cache()
    trainer.controlnet.to(trainer.device).train()
    base.model.to(trainer.device)
    res = images.shape[-1]
    prev = F.pad(prev, (0, res - prev.shape[-1], 0, res - prev.shape[-2]), value=1.0)
    rows = [torch.cat([images[i], prev[i], out[i].movedim(-1, 0)], dim=-1) for i in range(len(images))]
    sheet = torch.cat(rows, dim=-2).clamp(0, 1)
    arr = (sheet.movedim(0, -1).numpy() * 255 + 0.5).astype(np.uint8)
    tmp = path + ".tmp.png"
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if os.environ.get("SCG_VERBOSE") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        run(a)
    except SCGError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

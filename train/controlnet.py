"""Train an SCG ControlNet for SD1.5 on ComfyUI's own model code (pattern completion).

    python -m train.controlnet --base v1-5-pruned-emaonly.safetensors --autoencoder scg.safetensors \\
        --modules HC0 --data DIR [--captions captions.json] --out models/controlnet/scg_hc0.safetensors

The hint of every training image is the image's own SCG hint for ``--modules``, made by the
frozen autoencoder at the training resolution exactly as the inference nodes make it
(``ae.hint(image fitted to the generation size)``, raw, not resized). The SD1.5 UNet, VAE and
CLIP are loaded, frozen, with ComfyUI's loaders; the ControlNet is ComfyUI's own class,
initialised from the UNet's encoder with zero convolutions at zero. Objective: SD1.5's
epsilon-prediction under its own noise schedule (``model_sampling`` of the loaded model).

Several GPUs or machines: ``torchrun --nproc_per_node N -m train.controlnet ...`` (DDP; rank 0
writes). ``--resume auto`` continues exactly (weights, optimiser, step, sample stream, RNG) from
the newest checkpoint in ``--work-dir`` (default ``NAME.train/`` next to ``--out``). See
docs/controlnet_training.md.

Reads top to bottom: :class:`Trainer` (one optimiser step of the ControlNet against the frozen
base), the :class:`Recipe` (what must match to resume), the command line, then :class:`Training`:
build, then per step batch -> loss -> step -> log / eval / samples / save at their intervals.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scg_models.dtypes import DTYPES

from . import runtime
from .runtime import Dist, StopSignal, TrainError

log = logging.getLogger("scg.train")
TRAINER = "controlnet"
#: noise levels of the fixed-noise evaluation loss (timesteps of SD1.5's 1000-step schedule)
EVAL_TIMESTEPS = (50, 250, 500, 750, 950)



def autoencoder_sha256(ae) -> str:
    """Identity of an autoencoder: its config and weights."""
    h = hashlib.sha256(json.dumps({k: v for k, v in ae.config.to_dict().items() if k != "info"},
                                  sort_keys=True).encode())
    for k, v in sorted(ae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_identity(path: str) -> dict:
    st = os.stat(path)
    return {"name": os.path.basename(path), "size": st.st_size}


def lr_at(step: int, lr: float, warmup: int) -> float:
    """Constant learning rate (the authors'), after an optional linear warm-up."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def sample_generator(seed: int, position: int) -> torch.Generator:
    """The RNG of one sample position: noise, timestep and caption dropout depend only on
    (seed, position), never on the process or on how many ran before (exact resume, DDP = 1 GPU)."""
    # torch's CPU generator keeps only 32 bits of a seed: mix both numbers into 32 well-spread bits
    mixed = np.random.SeedSequence([int(seed) % 2**63, int(position) % 2**63]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(mixed))


# --- one optimiser step ---------------------------------------------------------------------
class Trainer:
    """One ControlNet being trained against a frozen SD1.5 base.

    ``base``: :class:`train.sd15.Base`; ``ae``: the frozen SCG autoencoder; ``modules``: module
    indices of the hint; ``controlnet``: the trainable ``comfy.cldm.cldm.ControlNet``. Batches are
    dicts from :func:`train.cn_data.collate` (``image`` Bx3xRxR in [0, 1], ``position``, and
    either ``caption`` strings or cached ``latent``/``text``). ``dist``: DDP over its processes.
    """

    def __init__(self, base, ae, modules, controlnet, *, device, precision="fp32", checkpointing=False,
                 lr=1e-5, weight_decay=1e-2, seed=0, caption_dropout=0.0, max_grad_norm=0.0, dist: Dist | None = None,
                 compile: bool = False):
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
        self.net = dist.wrap(self.controlnet, gradient_as_bucket_view=True) if dist else self.controlnet
        # --compile: both networks' forward passes through torch.compile (the modules themselves stay as they are)
        self.net_forward = torch.compile(self.net) if compile else self.net
        self.unet_forward = torch.compile(self.unet) if compile else self.unet
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(self.controlnet.parameters(), lr=lr, weight_decay=weight_decay, **fused)
        self._empty = None

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def hint(self, images: torch.Tensor) -> torch.Tensor:
        """The SCG hint, in fp32 outside autocast: exactly ``ae.hint`` as at inference."""
        with torch.autocast(self.device.type, enabled=False):
            return self.ae.hint(images.to(self.device, non_blocking=True), self.modules).float()

    def input_of(self, batch: dict) -> torch.Tensor:
        """The ControlNet's input for a batch: the hint of ``self.modules`` (:class:`SubsetTrainer`:
        hint and presence mask of each sample's drawn subset)."""
        return self.hint(batch["image"])

    def sheet_input(self, images: torch.Tensor) -> torch.Tensor:
        """The ControlNet's input when sampling the progress sheets (``images`` on any device)."""
        return self.ae.hint(images.to(self.device), self.modules)

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
        hint = self.input_of(batch)
        noise, timesteps, drop = [], [], []
        for p in batch["position"].tolist():
            g = sample_generator(self.seed, p)
            noise.append(torch.randn(latent.shape[1:], generator=g))
            timesteps.append(int(torch.randint(0, len(self.model_sampling.sigmas), (1,), generator=g)))
            drop.append(float(torch.rand((), generator=g)) < self.caption_dropout)
        if any(drop):
            context = torch.where(torch.tensor(drop, device=self.device).view(-1, 1, 1), self.empty_text(), context)
        noise = torch.stack(noise).to(self.device)
        return latent, context, hint, noise, torch.tensor(timesteps, device=self.device)

    def loss(self, latent, context, hint, noise, timesteps, net=None) -> torch.Tensor:
        from . import sd15

        sigma = self.model_sampling.sigmas.to(self.device)[timesteps]
        x_t = self.model_sampling.noise_scaling(sigma, noise, latent)
        with self.autocast():
            eps = sd15.predict_noise(self.unet_forward, net or self.net_forward, self.model_sampling, x_t, sigma,
                                     context, hint)
        return F.mse_loss(eps.float(), noise.float())

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


# --- the recipe -----------------------------------------------------------------------------
@dataclass
class Recipe:
    """What defines a run: a resumed run must match every field (files by identity)."""

    base: dict  # name and size of the SD1.5 checkpoint
    autoencoder: str  # sha256 of its config and weights
    modules: list[int]
    resolution: int
    batch_size: int  # per process and micro-step
    grad_accum: int
    world: int  # processes
    seed: int
    lr: float
    warmup: int
    weight_decay: float
    max_grad_norm: float
    precision: str
    caption_dropout: float
    data: str  # fingerprint of the image list and captions
    samples: int
    precompute: bool
    init: dict | None  # the ControlNet fine-tuned from (name, size), or None: the UNet's encoder
    subsets: dict | None = None  # any-subset training: the SubsetPolicy's probabilities; None: per-group


# --- the command line -----------------------------------------------------------------------
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
    g.add_argument("--work-dir", help="checkpoints, metrics.jsonl and sample sheets (default: <out>.train/)")
    g = ap.add_argument_group("recipe (defaults: the authors')")
    g.add_argument("--steps", type=int, help="optimiser steps (default: 5 epochs of the data, as the authors)")
    g.add_argument("--batch-size", type=int, default=4, help="images per process and micro-step")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimiser step")
    g.add_argument("--lr", type=float, default=1e-5)
    g.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    g.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    g.add_argument("--max-grad-norm", "--clip-grad", dest="max_grad_norm", type=float, default=0.0,
                   help="gradient clipping (0: off)")
    g.add_argument("--resolution", type=int, default=512, help="square training size in pixels")
    g.add_argument("--caption-dropout", type=float, default=0.0, help="probability of training with the empty prompt")
    g.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("cost")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast on CUDA GPUs that support it, else fp32 (the authors); bf16 (autocast, "
                        "the frozen UNet stored in bf16) also runs on the CPU")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the ControlNet's and the UNet's forward passes (needs a C compiler on the CPU)")
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute block activations in the backward pass (less memory, ~25%% more compute)")
    g.add_argument("--precompute", action="store_true",
                   help="encode latents and text embeddings once into a cache on disk, then train from it")
    g.add_argument("--cache-dir", help="cache folder (default: .scg-cache/NAME next to --out)")
    g.add_argument("--workers", type=int, help="data-loading processes per GPU (default: min(8, CPUs/GPUs))")
    g.add_argument("--deterministic", action="store_true",
                   help="CUDA: deterministic kernels (slower), so a resumed run repeats bit for bit as on the CPU")
    g.add_argument("--save-dtype", choices=sorted(DTYPES), default="fp16",
                   help="dtype of the output ControlNet weights (checkpoints are always fp32)")
    g = ap.add_argument_group("checkpoints, progress, samples")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="auto|PATH",
                   help="continue exactly from the newest checkpoint in --work-dir (auto; a fresh start, said so, "
                        "when there is none) or from this checkpoint file")
    g.add_argument("--save-every", "--ckpt-every", dest="save_every", type=int, default=1000,
                   help="write the ControlNet and a checkpoint every N steps")
    g.add_argument("--keep", type=int, default=1, help="checkpoints kept (each holds the fp32 weights and AdamW state)")
    g.add_argument("--stop-after", type=int, help="stop (saving) after this many steps in this run")
    g.add_argument("--log-every", type=int, default=10, help="a metrics.jsonl line every N steps")
    g.add_argument("--eval-every", type=int, help="fixed-noise loss every N steps (default: --save-every)")
    g.add_argument("--eval-images", type=int, default=8, help="images of the fixed-noise loss")
    g.add_argument("--samples", type=int, default=4, help="held-out images for the sample sheets (0: none)")
    g.add_argument("--sample-every", "--sheet-every", dest="sample_every", type=int, default=1000,
                   help="sample sheet sheets/samples_STEP.png every N steps")
    g.add_argument("--sample-steps", type=int, default=20)
    g.add_argument("--sample-cfg", type=float, default=7.5)
    g.add_argument("--sampler", default="euler", help="a ComfyUI sampler name")
    g.add_argument("--scheduler", default="normal", help="a ComfyUI scheduler name")
    g = ap.add_argument_group("host")
    g.add_argument("--comfyui", help="ComfyUI checkout (default: $COMFYUI_PATH, the ComfyUI holding this folder, "
                                     "~/comfy/ComfyUI)")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if CUDA is available")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="auto, cpu (= --cpu) or cuda")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_subset_arguments(ap)
    return ap


def check_args(args) -> None:
    for name in ("batch_size", "grad_accum", "resolution", "save_every", "log_every", "keep"):
        if getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps is not None and args.steps < 1:
        raise TrainError("--steps must be >= 1")
    if not 0 <= args.caption_dropout <= 1:
        raise TrainError("--caption-dropout must be in [0, 1]")
    if not 0 < args.lr < math.inf:
        raise TrainError("--lr must be finite and > 0")
    if not args.out.endswith(".safetensors"):
        raise TrainError("--out must end in .safetensors (ComfyUI's ControlNet folder format)")
    subset_policy(args)


def holdout(n: int, k: int) -> list[int]:
    """``k`` evenly spread indices of ``n`` images, held out for the sample sheets."""
    if k <= 0:
        return []
    if k >= n:
        raise TrainError(f"--samples {k}: needs more than {k} images (found {n}); lower --samples or use 0")
    return sorted({(i * n) // k for i in range(k)})


# --- the run ----------------------------------------------------------------------------------
class Training:
    """One run: models, data and (resumed) state built in ``__init__``, trained by :meth:`train`."""

    def __init__(self, args, dist: Dist):
        from scg_models import formats, load_autoencoder

        from . import sd15
        from .cn_data import TrainSet, collate, precompute, scan, step_batches

        self.args, self.dist, self.t_start = args, dist, time.time()
        self.out = args.out
        self.work_dir = args.work_dir or runtime.default_work_dir(args.out)
        precision = args.precision
        if precision == "auto":
            precision = "bf16" if dist.cuda and torch.cuda.is_bf16_supported() else "fp32"
        if dist.cuda:  # fixed shapes: cuDNN picks its fastest kernels, unless bitwise repeatability is asked for
            torch.backends.cudnn.benchmark = not args.deterministic
            if args.deterministic:
                torch.backends.cudnn.deterministic = True
                torch.use_deterministic_algorithms(True, warn_only=True)

        # the autoencoder and the module selection
        self.ae = load_autoencoder(args.autoencoder)
        self.modules = self.ae.resolve_modules(args.modules)
        self.hint_hw = self.ae.output_size(args.resolution, args.resolution)
        # the base, frozen (refuses anything but SD1.5 before building models). bf16 training keeps the
        # frozen UNet's weights in bf16 (on the CPU ComfyUI's loader casts them per layer: manual cast)
        unet_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.base = sd15.load_base(args.base, unet_dtype=unet_dtype)
        if args.resolution % self.base.latent_factor:
            raise TrainError(f"--resolution {args.resolution}: must be a multiple of {self.base.latent_factor} "
                             "for this UNet")
        # the ControlNet: the UNet's encoder, or a given ControlNet to fine-tune
        self.policy = subset_policy(args)
        self.controlnet = sd15.build_controlnet(self.base, seed=args.seed, hint_channels=hint_channels(self.policy,
                                                                                                         self.ae))
        init_from = None
        if args.init_controlnet:
            start = subset_init(formats.load_controlnet_file(args.init_controlnet).state_dict, self.controlnet)
            own = self.controlnet.state_dict()
            bad = sorted(set(own) ^ set(start)) + [k for k in own if k in start and own[k].shape != start[k].shape]
            if bad:
                raise TrainError(f"--init-controlnet: {args.init_controlnet} does not fit this base's ControlNet "
                                 f"(first mismatching key: {bad[0]})")
            self.controlnet.load_state_dict({k: v.float() for k, v in start.items()})
            init_from = file_identity(args.init_controlnet)
        latent_hw = args.resolution // 8
        block_hw = sd15.hint_block_size(self.hint_hw, self.controlnet)
        if block_hw != (latent_hw, latent_hw):
            raise TrainError(f"the autoencoder's hint at {args.resolution}px is {self.hint_hw[0]}x{self.hint_hw[1]}; "
                             f"the ControlNet's hint block turns that into {block_hw}, not the latent size "
                             f"{latent_hw}x{latent_hw}; pick another --resolution")

        # data: rank 0 scans, every rank trains on its view of the folder
        self.index = dist.broadcast(scan(args.data, args.captions, check=True) if dist.is_main else None)
        self.workers = (args.workers if args.workers is not None
                        else min(8, max(1, (os.cpu_count() or 2) // dist.world_size)))
        self.skipped = dict(self.index.skipped)  # relative path -> reason
        cache = None
        if args.precompute:
            folder = args.cache_dir or str(Path(args.out).resolve().parent / ".scg-cache" / Path(args.out).stem)
            key = {"base": file_identity(args.base), "data": self.index.fingerprint(), "resolution": args.resolution,
                   "version": 1}
            cache, failed = precompute(self.base, self.index, args.resolution, folder, key, dist, args.batch_size,
                                       self.workers)
            self.skipped.update(failed)
        readable = [i for i, p in enumerate(self.index.paths) if p not in self.skipped]
        held = [readable[k] for k in holdout(len(readable), args.samples)]
        self.usable = [i for i in readable if i not in set(held)]
        order = runtime.EpochOrder(len(self.usable), args.seed)
        self.steps = args.steps or math.ceil(5 * len(self.usable) / (args.batch_size * args.grad_accum
                                                                       * dist.world_size))
        self.recipe = Recipe(
            base=file_identity(args.base), autoencoder=autoencoder_sha256(self.ae), modules=self.modules,
            resolution=args.resolution, batch_size=args.batch_size, grad_accum=args.grad_accum,
            world=dist.world_size, seed=args.seed, lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay,
            max_grad_norm=args.max_grad_norm, precision=precision, caption_dropout=args.caption_dropout,
            data=self.index.fingerprint(), samples=args.samples, precompute=bool(args.precompute), init=init_from,
            subsets=self.policy.to_dict() if self.policy else None)
        trainer_class = Trainer if self.policy is None else functools.partial(SubsetTrainer, policy=self.policy)
        self.trainer = trainer_class(self.base, self.ae, self.modules, self.controlnet, device=dist.device,
                               precision=precision, checkpointing=args.gradient_checkpointing, lr=args.lr,
                               weight_decay=args.weight_decay, seed=args.seed, caption_dropout=args.caption_dropout,
                               max_grad_norm=args.max_grad_norm, dist=dist, compile=args.compile)

        # resume: the newest checkpoint (auto) or the one named; its recipe must be this run's
        self.step = 0
        self.final_losses: dict[str, float] = {}
        path = runtime.find_resume(args.resume, self.work_dir)
        if path is not None:
            self.resume_from(path)
        self.stop_at = self.steps if args.stop_after is None else min(self.steps, self.step + args.stop_after)

        # the batches of the steps still to go, the fixed evaluation batch, the held-out sample batch
        self.loader = torch.utils.data.DataLoader(
            TrainSet(self.index, self.usable, args.resolution, cache),
            batch_sampler=step_batches(order, args.batch_size, dist.world_size, dist.rank,
                                       self.step * args.grad_accum, self.stop_at * args.grad_accum),
            num_workers=self.workers, collate_fn=collate, pin_memory=dist.cuda,
            prefetch_factor=4 if self.workers > 0 else None)
        train_set = TrainSet(self.index, self.usable, args.resolution, cache)
        self.eval_batch = (collate([train_set[(0, i)] for i in range(min(args.eval_images, len(self.usable)))])
                           if args.eval_images > 0 else None)
        held_set = TrainSet(self.index, held, args.resolution, None)
        self.sample_batch = collate([held_set[(0, i)] for i in range(len(held))]) if held else None

        # files (rank 0): leftovers of killed writes go, the log continues at this step
        self.log = runtime.open_work_dir(self.out, self.work_dir, self.step, dist)

    def resume_from(self, path: str) -> None:
        state = runtime.load_checkpoint(path, TRAINER)
        saved = state.get("recipe") if isinstance(state.get("recipe"), dict) else {}
        now = asdict(self.recipe)
        diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if diff:
            raise TrainError("--resume: the run differs from the saved one, so it cannot continue exactly: "
                             + "; ".join(f"{k}: saved {o!r}, now {n!r}" for k, (o, n) in diff.items()))
        def restore():
            self.controlnet.load_state_dict(state["controlnet"])
            self.trainer.optimizer.load_state_dict(state["optimizer"])
            runtime.set_rng_state(state["rng"][self.dist.rank], self.dist.device)
            self.step = int(state["step"])
            self.final_losses = {str(k): float(v) for k, v in dict(state.get("final_losses", {})).items()}
            for rel, reason in dict(state.get("skipped", {})).items():
                self.skipped.setdefault(str(rel), str(reason))

        runtime.load_weights("state", restore, path)
        if self.dist.is_main:
            print(f"resumed from {path} at step {self.step}", file=sys.stderr)

    # --- the loop -----------------------------------------------------------------------------
    def train(self) -> dict:
        """Train from ``self.step`` to ``stop_at``; returns a summary (rank 0's view)."""
        args, dist = self.args, self.dist
        self.announce()
        first_eval = self.evaluate() if self.step == 0 else None
        eval_every = args.eval_every or args.save_every
        losses, t_log, ema = [], time.time(), None
        batches = iter(self.loader)
        bar = runtime.progress(range(self.step, self.stop_at), total=self.steps, initial=self.step,
                               enabled=dist.is_main and not args.no_progress)
        stopped = False
        with StopSignal(announce=dist.is_main) as stop:
            for _ in bar:
                micro_batches = [next(batches) for _ in range(args.grad_accum)]
                self.note_skipped(micro_batches)
                lr = lr_at(self.step, args.lr, args.warmup)
                loss = self.trainer.step(micro_batches, lr)
                self.step += 1
                mean = dist.mean({"loss": loss, "stop": float(stop.requested)})
                runtime.check_finite({"loss": mean["loss"]}, self.step)
                stopped = mean["stop"] > 0
                losses.append(mean["loss"])
                ema = mean["loss"] if ema is None else 0.98 * ema + 0.02 * mean["loss"]
                bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr:.2e}", refresh=False)
                if self.step % args.log_every == 0 or self.step == self.stop_at or stopped:
                    t_log = self.log_metrics(losses, lr, t_log)
                    losses = []
                if self.step % eval_every == 0 and self.step != self.stop_at:
                    self.evaluate()
                if args.sample_every > 0 and self.step % args.sample_every == 0 and self.step != self.stop_at:
                    self.write_samples()
                if stopped:
                    break
                if self.step % args.save_every == 0 and self.step != self.stop_at:
                    self.save()
        bar.close()
        self.save()
        last_eval = self.evaluate()
        sheet = self.write_samples() if args.sample_every > 0 else None
        done = self.step >= self.steps
        summary = {"step": self.step, "steps": self.steps, "done": done, "out": self.out, "work_dir": self.work_dir,
                   "skipped": len(self.skipped) + sum(self.index.scan_skipped.values()),
                   "skipped_files": sorted(self.skipped), "images": len(self.usable),
                   "first_eval_loss": first_eval, "last_eval_loss": last_eval, "sheet": sheet,
                   "final_losses": self.final_losses, "seconds": time.time() - self.t_start}
        if dist.is_main:
            self.log.write({"event": "end", **{k: v for k, v in summary.items() if k != "skipped_files"}})
            counts = runtime.skipped_counts(self.skipped, self.index.scan_skipped)
            print(f"{'finished' if done else 'stopped'} at step {self.step}/{self.steps}: wrote {self.out} and a "
                  f"checkpoint in {os.path.join(self.work_dir, 'ckpts')}"
                  + (f"; skipped {runtime.describe_skipped(counts)} image files" if sum(counts.values()) else ""),
                  file=sys.stderr)
        return summary

    def announce(self) -> None:
        """The recipe and the plan, once at the start (rank 0)."""
        if not self.dist.is_main:
            return
        args, recipe = self.args, self.recipe
        counts = runtime.skipped_counts(self.skipped, self.index.scan_skipped)
        print("recipe: " + json.dumps(asdict(recipe)), file=sys.stderr)
        print(f"SCG ControlNet: {len(self.usable)} training images ({self.index.captioned} captioned from "
              f"{self.index.caption_source}; {args.samples} held out for samples; {runtime.describe_skipped(counts)} "
              f"skipped), modules {args.modules} = {self.modules}, hint {self.hint_hw[0]}x{self.hint_hw[1]} at "
              f"{args.resolution}px, {recipe.precision}, checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
              f"{'cached latents' if args.precompute else 'latents encoded per step'}, {self.dist.world_size} process(es) x "
              f"batch {args.batch_size} x accum {args.grad_accum}, steps {self.step}->{self.stop_at} of {self.steps}",
              file=sys.stderr)
        self.log.write({"step": self.step, "event": "start", "steps": self.steps, "images": len(self.usable),
                        "skipped": sum(counts.values()), "precision": recipe.precision, "world_size": self.dist.world_size,
                        "recipe": asdict(recipe)})

    def note_skipped(self, micro_batches: list[dict]) -> None:
        for batch in micro_batches:
            for rel, reason in batch["skipped"]:
                if rel not in self.skipped:
                    self.skipped[rel] = reason
                    log.warning("skipped image %s: %s", rel, reason)

    def log_metrics(self, losses: list[float], lr: float, t_log: float) -> float:
        now = time.time()
        entry = {"step": self.step, "loss": sum(losses) / len(losses), "lr": lr,
                 "it_s": len(losses) / max(now - t_log, 1e-9)}
        if self.dist.cuda:
            entry["max_mem_gb"] = torch.cuda.max_memory_allocated(self.dist.device) / 2**30
        self.log.write(entry)
        self.final_losses = {"loss": entry["loss"]}
        return now

    def evaluate(self) -> float | None:
        """Fixed-noise loss of the evaluation batch (rank 0), logged as an ``eval`` event."""
        if self.eval_batch is None:
            return None
        value = self.trainer.eval_loss(self.eval_batch) if self.dist.is_main else None
        self.log.write({"step": self.step, "event": "eval", "eval_loss": value})
        self.dist.barrier()
        return value

    def write_samples(self) -> str | None:
        """Sample sheet of the held-out images (rank 0): ``sheets/samples_STEP.png``."""
        path = None
        if self.sample_batch is not None and self.dist.is_main:
            path = os.path.join(self.work_dir, "sheets", f"samples_{self.step:08d}.png")
            write_sheet(self.trainer, self.sample_batch, path, self.args)
        self.dist.barrier()
        return path

    def save(self) -> None:
        """The output ControlNet (``--save-dtype``) and a checkpoint to continue exactly (rank 0 writes)."""
        from scg_models import formats

        rngs = self.dist.gather(runtime.rng_state(self.dist.device))
        self.skipped = self.dist.merge(self.skipped)
        if self.dist.is_main:
            args = self.args
            info = {"trainer": "scg train.controlnet", "modules": self.modules, "selection": args.modules,
                    "autoencoder": {"file": os.path.basename(args.autoencoder), "sha256": self.recipe.autoencoder},
                    "hint": {"resolution": args.resolution, "size": list(self.hint_hw),
                             "how": "ae.hint(image centre-cropped and resized to the generation size), raw, "
                                    "fed to the hint block without resizing"},
                    "base": os.path.basename(args.base), "steps": self.step, "images": len(self.usable),
                    "init": os.path.basename(args.init_controlnet) if args.init_controlnet else "unet-encoder",
                    "batch_size": args.batch_size, "grad_accum": args.grad_accum, "world_size": self.dist.world_size,
                    "lr": args.lr, "precision": self.recipe.precision, "caption_dropout": args.caption_dropout,
                    "captions": self.index.caption_source, "final_losses": self.final_losses,
                    "skipped": runtime.skipped_counts(self.skipped, self.index.scan_skipped)}
            weights = formats.ControlNetFile(dict(self.controlnet.state_dict()), self.ae, {})
            save = formats.save_controlnet if self.policy is None else save_any_subset
            save(weights, self.out, dtype=DTYPES[args.save_dtype], info=info)
            state = {"recipe": asdict(self.recipe), "controlnet": self.controlnet.state_dict(),
                     "optimizer": self.trainer.optimizer.state_dict(), "rng": rngs, "skipped": dict(self.skipped),
                     "final_losses": self.final_losses}
            runtime.save_checkpoint(state, self.work_dir, self.step, TRAINER, args.keep)
        self.dist.barrier()


@torch.no_grad()
def write_sheet(trainer: Trainer, batch: dict, path: str, args) -> None:
    """One PNG: per held-out image a row of [image, hint preview, sample] with ComfyUI's sampler."""
    import comfy.model_management as mm
    from PIL import Image

    from scg_models import minmax

    from . import sd15
    from .runtime import atomic_write

    base, images = trainer.base, batch["image"]
    context = sd15.encode_text(base, batch["caption"])
    uncond = sd15.encode_text(base, [""] * len(batch["caption"]))
    patcher = base.patcher.clone()
    patcher.offload_device = trainer.device  # ComfyUI may "unload" it after sampling: keep it where training needs it
    sampling_base = dataclasses.replace(base, patcher=patcher)

    def hint_fn(x):
        return trainer.sheet_input(x)

    with torch.autocast(trainer.device.type, enabled=False):
        out = sd15.sample(sampling_base, trainer.controlnet, images, hint_fn, context, uncond,
                          steps=args.sample_steps, cfg=args.sample_cfg, sampler=args.sampler, scheduler=args.scheduler,
                          seed=args.seed, keep_on=trainer.device)
        preview = minmax(trainer.hint(images)).cpu()
    mm.soft_empty_cache()
    trainer.controlnet.to(trainer.device).train()
    base.model.to(trainer.device)
    res = images.shape[-1]
    preview = F.pad(preview, (0, res - preview.shape[-1], 0, res - preview.shape[-2]), value=1.0)
    rows = [torch.cat([images[i], preview[i], out[i].movedim(-1, 0)], dim=-1) for i in range(len(images))]
    sheet = torch.cat(rows, dim=-2).clamp(0, 1)
    pixels = (sheet.movedim(0, -1).numpy() * 255 + 0.5).astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


# --- any-subset training (--subsets) ------------------------------------------------------------
def add_subset_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("any-subset ControlNet (docs/any_subset.md)")
    g.add_argument("--subsets", action="store_true",
                   help="train one ControlNet for any module subset: per sample a random subset of --modules (the "
                        "pool, e.g. all) is drawn; the ControlNet gets its hint plus a presence mask of the kept modules")
    g.add_argument("--p-group", type=float, default=0.6, help="probability of a group-level draw (1..G whole groups)")
    g.add_argument("--p-module", type=float, default=0.35, help="probability of a module-level draw (1..M modules)")
    g.add_argument("--p-none", type=float, default=0.05, help="probability of a sample with no modules (no control)")


def subset_policy(args):
    """The :class:`scg_models.subsets.SubsetPolicy` of ``--subsets`` (None without it); bad
    probabilities are a :class:`TrainError` naming the option."""
    from scg_models import SCGError
    from scg_models.subsets import SubsetPolicy

    if not getattr(args, "subsets", False):
        return None
    try:
        return SubsetPolicy(args.p_group, args.p_module, args.p_none)
    except SCGError as e:  # names the option
        raise TrainError(str(e)) from None


def hint_channels(policy, ae) -> int:
    from scg_models.subsets import input_channels

    return 3 if policy is None else input_channels(ae.n_vector)


def subset_init(start: dict, controlnet: torch.nn.Module) -> dict:
    """``--init-controlnet`` for an any-subset run: a per-group ControlNet's 3-channel hint block is
    widened with zero weights for the presence mask (:func:`train.sd15.widen_hint_input`)."""
    from . import sd15

    width = controlnet.input_hint_block[0].in_channels
    key = "input_hint_block.0.weight"
    if width == 3 or key not in start or start[key].dim() != 4 or start[key].shape[1] != 3:
        return start
    return sd15.widen_hint_input(start, width)


def save_any_subset(weights, path, dtype, info) -> None:
    from scg_models import formats

    formats.save_any_subset_controlnet(weights, path, dtype=dtype, info={**info, "kind": formats.ANY_SUBSET})


class SubsetTrainer(Trainer):
    """:class:`Trainer` of an any-subset ControlNet: each sample's modules are drawn from the pool
    ``modules`` by ``policy`` as a pure function of (seed, sample position); the input is the
    hint of the kept modules (gains 1) and their presence mask, B x (3 + n_vector) x h x w."""

    def __init__(self, *args, policy, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy = policy

    def subsets_of(self, positions) -> list[list[int]]:
        from scg_models.subsets import draw_subset

        return [draw_subset(self.policy, self.modules, self.ae.groups, self.seed, int(p)) for p in positions]

    @torch.no_grad()
    def input_of(self, batch: dict) -> torch.Tensor:
        from scg_models.subsets import subset_input

        positions = batch.get("subset_position", batch["position"]).tolist()
        with torch.autocast(self.device.type, enabled=False):
            return subset_input(self.ae, batch["image"].to(self.device), self.subsets_of(positions)).float()

    def sheet_input(self, images: torch.Tensor) -> torch.Tensor:
        from scg_models.subsets import subset_input

        return subset_input(self.ae, images.to(self.device), [self.modules] * images.shape[0])

    @torch.no_grad()
    def eval_loss(self, batch: dict) -> float:
        """As :meth:`Trainer.eval_loss`; the k-th evaluation image always gets the subset of
        position -1-k (the evaluation batch's positions are all 0)."""
        fixed = dict(batch, subset_position=-1 - torch.arange(len(batch["position"])))
        return super().eval_loss(fixed)


def run(args) -> dict:
    """Train as the parsed command line ``args`` says. Returns a summary dict (rank 0's view)."""
    from . import sd15

    check_args(args)
    if args.deterministic:  # before cuBLAS starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    dist = Dist.start("cpu" if args.cpu or args.device == "cpu" else (args.device or "auto"), timeout_s=2 * 3600)
    try:
        sd15.import_comfy(args.comfyui, cpu=not dist.cuda)
        return Training(args, dist).train()
    finally:
        dist.close()


def main(argv=None) -> int:
    """The command: 0 when the run finished, 130 when stopped early (a checkpoint written), 2 on an error."""
    args = build_parser().parse_args(argv)
    return runtime.run_cli(lambda: 0 if run(args)["done"] else 130)


if __name__ == "__main__":
    sys.exit(main())

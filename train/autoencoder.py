"""Train SCG's modular autoencoder with the equivariance and symmetry losses.

    python -m train.autoencoder --out my_model.safetensors [--data FOLDER] [--steps 40000] ...
    python -m train.autoencoder --resume auto --out my_model.safetensors     # continue exactly
    torchrun --standalone --nproc_per_node 4 -m train.autoencoder --device cuda --out m.safetensors

Without ``--data`` it trains on the photographs that scikit-image ships in its package.
The output is a ``.safetensors`` that ``scg_models.load_autoencoder`` (and the ComfyUI
loader) read as is, with groups derived from the learned kernels and the exact command,
data and step count in its metadata. Checkpoints (``ckpts/``), ``metrics.jsonl`` and PNG sheets
of the modules (``sheets/``) go to ``--work-dir`` (default: ``<name>.train/`` next to ``--out``).

Reads top to bottom: the :class:`Recipe` (what defines a run) and :class:`Options` (how this
process runs it), the command line, then :class:`Training`: build, then per step
batch -> loss -> optimiser step -> log / sheet / checkpoint at their intervals, then the model file.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone

import torch

import scg_models
from scg_models import AutoencoderConfig, ModularAutoencoder
from scg_models.gonlin import GONLINS
from scg_models.groups import validate_groups

from . import runtime
from .data import CropBatches, ImageSet, Plan
from .losses import PASSES, EquivarianceCodebook, LossWeights, Trainee
from .runtime import Dist, StepSampler, StopSignal, TrainError

TRAINER = "autoencoder"


@dataclass
class Recipe:
    """What defines a run (the paper's recipe by default); a resumed run keeps every field."""

    data: str | None = None  # image folder; None: scikit-image's photographs
    steps: int = 40000
    batch_size: int = 64  # crops per step, over all processes
    crop: int = 128
    lr: float = 5e-3  # AdamW peak, one-cycle cosine
    weight_decay: float = 1e-4
    eps: float = 1e-8
    warmup: float = 0.1  # fraction of steps
    clip_grad: float = 0.0
    seed: int = 0
    gonlin: str = "Bipolar"
    n_vector: int = 16
    vector_length: int = 4
    stride: int = 4
    kernel_size: int | None = None
    activation: str | None = None
    max_translate: float = 0.3
    max_rotate: float = 180.0
    passes: str = "trans,rot"
    lambda_rec: float = 1.0
    lambda_rec_trans: float = 1.0
    lambda_rec_pred: float = 0.0
    lambda_equ: float = 1.0
    lambda_sym: float = 0.1
    temperature: float = 0.1
    codebook_translate: int = 9
    codebook_rotate: int = 16
    codebook_init: float = 1e-2
    init_scale: float = 1.0
    mask_margin: float | None = None
    resize: int = 512


@dataclass
class Options:
    """How this process runs (may change between a run and its resumption)."""

    out: str | None = None
    work_dir: str | None = None
    resume: str | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    deterministic: bool = False
    threads: int = 0
    workers: int = -1
    cache_mb: float = 1024.0
    log_every: int = 10
    ckpt_every: int = 1000
    sheet_every: int = 1000
    keep: int = 3
    groups: str | None = None
    progress: bool = True
    stop_after: int = 0


#: Options a resumed run never takes from its checkpoint: where to read and write comes from the
#: command line only (a checkpoint's stored paths are reported, never used).
COMMAND_LINE_ONLY = ("out", "work_dir", "resume", "groups", "stop_after")
RECIPE_FIELDS = {f.name for f in fields(Recipe)}
OPTION_FIELDS = {f.name for f in fields(Options)}


# --- the command line ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    recipe, options = Recipe(), Options()
    p = argparse.ArgumentParser(
        prog="python -m train.autoencoder", argument_default=argparse.SUPPRESS,
        description="Train SCG's modular autoencoder (reconstruction + equivariance + symmetry losses).",
        epilog="Defaults are the paper's recipe (AdamW, cosine from lr 0.005, 40k steps). See docs/training.md.")
    g = p.add_argument_group("data and output")
    g.add_argument("--data", help="folder of images (png/jpg/webp/bmp/tif, searched recursively); "
                   "default: the photographs scikit-image ships (pip install scikit-image)")
    g.add_argument("--out", help="output .safetensors (required, also when resuming)")
    g.add_argument("--work-dir", help="checkpoints, metrics.jsonl and PNG sheets (default: <out>.train/)")
    g.add_argument("--resume", nargs="?", const="auto", help="'auto' (the newest checkpoint in --work-dir; "
                   "a fresh start, said so, when there is none) or a checkpoint path; continues exactly")
    g.add_argument("--groups", help="JSON file [{name, modules, description}, ...] to write instead of "
                   "the groups derived from the learned kernels")
    g.add_argument("--resize", type=int, help=f"scale images whose shorter side exceeds this down to it; 0: never "
                   f"(default {recipe.resize})")
    g = p.add_argument_group("schedule")
    g.add_argument("--steps", type=int, help=f"optimiser steps (default {recipe.steps})")
    g.add_argument("--batch-size", type=int, help=f"images per step, over all processes (default {recipe.batch_size})")
    g.add_argument("--crop", type=int, help=f"random crop side in pixels (default {recipe.crop})")
    g.add_argument("--lr", type=float, help=f"peak learning rate, AdamW + one-cycle cosine (default {recipe.lr})")
    g.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {recipe.weight_decay})")
    g.add_argument("--eps", type=float, help=f"AdamW eps (default {recipe.eps})")
    g.add_argument("--warmup", type=float, help=f"fraction of steps warming up (default {recipe.warmup})")
    g.add_argument("--clip-grad", "--max-grad-norm", dest="clip_grad", type=float,
                   help="clip the gradient norm to this; 0: off (default)")
    g.add_argument("--seed", type=int, help=f"seed of the initial weights, data order and transforms (default {recipe.seed})")
    g = p.add_argument_group("model")
    g.add_argument("--gonlin", choices=sorted(GONLINS), help="kernel factorisation (default Bipolar)")
    g.add_argument("--n-vector", type=int, help=f"modules (default {recipe.n_vector})")
    g.add_argument("--vector-length", type=int, help=f"channels per module (default {recipe.vector_length})")
    g.add_argument("--stride", type=int, help="encoder stride (default 4, the one Bipolar's cascade implies)")
    g.add_argument("--kernel-size", type=int, help="kernel size (Vanilla only; default 21)")
    g.add_argument("--activation", choices=["gelu", "relu"], help="feature activation (default none: f = I*W)")
    g.add_argument("--init-scale", type=float, help="factor weights start as kaiming normal (fan_out, the authors' "
                   "init) times this (default 1)")
    g = p.add_argument_group("losses")
    g.add_argument("--lambda-rec", type=float, help=f"|D(f) - I|^2 (default {recipe.lambda_rec})")
    g.add_argument("--lambda-rec-trans", type=float, help=f"|D(f') - I'|^2, per pass (default {recipe.lambda_rec_trans})")
    g.add_argument("--lambda-rec-pred", type=float, help="|D(predicted f') - I'|^2, per pass "
                   "(the authors' later code; default 0 as in the paper)")
    g.add_argument("--lambda-equ", type=float, help=f"equivariance lambda1, per pass (default {recipe.lambda_equ}); "
                   "0 gives the no-equivariance ablation")
    g.add_argument("--lambda-sym", type=float, help=f"symmetry lambda2 (default {recipe.lambda_sym})")
    g.add_argument("--temperature", type=float, help=f"softmax temperature T of the symmetry loss (default {recipe.temperature})")
    g.add_argument("--passes", help="transform passes per step: trans, rot or trans,rot (default)")
    g.add_argument("--max-translate", type=float, help="translations ~ U(+-this) in normalised units, the image "
                   f"spanning [-1, 1] (default {recipe.max_translate} = +-15%% of the side)")
    g.add_argument("--max-rotate", type=float, help=f"rotation pass angles ~ U(+-this) degrees (default {recipe.max_rotate})")
    g.add_argument("--codebook-translate", type=int,
                   help=f"table points per translation axis (default {recipe.codebook_translate})")
    g.add_argument("--codebook-rotate", type=int, help=f"table points over 360 degrees (default {recipe.codebook_rotate})")
    g.add_argument("--codebook-init", type=float, help="table = identity + U(+-this) at start (default 0.01)")
    g.add_argument("--mask-margin", type=float, help="pixels a feature's source keeps from the image border "
                   "(default: the kernel radius)")
    g = p.add_argument_group("running")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N; under torchrun one GPU per process")
    g.add_argument("--cpu", dest="device", action="store_const", const="cpu", help="same as --device cpu")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="auto: bf16 autocast on CUDA, fp32 on CPU; "
                   "bf16 also runs on the CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model's forward pass (needs a C compiler "
                   "on the CPU; the first steps are slow while it compiles)")
    g.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (the CPU always is)")
    g.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    g.add_argument("--workers", type=int, help="data-loading processes (default: 0 for the embedded photos, "
                   "else up to 4)")
    g.add_argument("--cache-mb", type=float, help=f"decoded-image cache per loader process, MiB (default {options.cache_mb:g})")
    g.add_argument("--log-every", type=int, help=f"steps between metrics lines (default {options.log_every})")
    g.add_argument("--ckpt-every", "--save-every", dest="ckpt_every", type=int,
                   help=f"steps between checkpoints (default {options.ckpt_every})")
    g.add_argument("--sheet-every", "--sample-every", dest="sheet_every", type=int,
                   help=f"steps between PNG sheets; 0: only at the end (default {options.sheet_every})")
    g.add_argument("--keep", type=int, help=f"checkpoints kept (default {options.keep})")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many steps of this run")
    return p


def parse(argv: list[str]) -> tuple[Recipe, Options, dict | None]:
    """(recipe, options, checkpoint or None). Resuming, the checkpoint's recipe wins (a flag that
    contradicts it is an error) and its options carry over unless given; paths never do."""
    given = vars(build_parser().parse_args(argv))
    options = Options(**{k: v for k, v in given.items() if k in OPTION_FIELDS})
    if not options.out:
        raise TrainError("--out FILE.safetensors is required (also when resuming: where to write comes from the "
                         "command line only)")
    work_dir = options.work_dir or runtime.default_work_dir(options.out)
    path = runtime.find_resume(options.resume, work_dir)
    if path is None:
        recipe = Recipe(**{k: v for k, v in given.items() if k in RECIPE_FIELDS})
        return check(recipe, options), options, None
    checkpoint = runtime.load_checkpoint(path, TRAINER)
    saved = checkpoint.get("recipe")
    if not isinstance(saved, dict) or set(saved) != RECIPE_FIELDS:
        raise TrainError(f"--resume {path}: its recipe is not this trainer's (fields differ)")
    clash = {k: (v, saved[k]) for k, v in given.items() if k in RECIPE_FIELDS and saved[k] != v}
    if clash:
        k, (v, old) = next(iter(clash.items()))
        raise TrainError(f"--resume: --{k.replace('_', '-')} {v} differs from the checkpoint's {old}; "
                         "a resumed run continues the same recipe (start a new run to change it)")
    runtime.typed_fields(Recipe, saved, f"--resume {path}: recipe")
    stored = checkpoint.get("options") if isinstance(checkpoint.get("options"), dict) else {}
    carried = {k: v for k, v in stored.items() if k in OPTION_FIELDS and k not in COMMAND_LINE_ONLY}
    runtime.typed_fields(Options, carried, f"--resume {path}: options")
    options = Options(**{**carried, **{k: v for k, v in given.items() if k in OPTION_FIELDS}})
    checkpoint["path"] = path
    return check(Recipe(**saved), options), options, checkpoint


def check(recipe: Recipe, options: Options) -> Recipe:
    """Refuse a recipe or options that cannot train (names the flag); returns the recipe."""
    for k in ("steps", "batch_size", "crop", "n_vector", "vector_length", "stride"):
        if not isinstance(getattr(recipe, k), int) or getattr(recipe, k) < 1:
            raise TrainError(f"--{k.replace('_', '-')} must be an integer >= 1; got {getattr(recipe, k)}")
    for k in ("log_every", "ckpt_every", "keep"):
        if not isinstance(getattr(options, k), int) or getattr(options, k) < 1:
            raise TrainError(f"--{k.replace('_', '-')} must be an integer >= 1; got {getattr(options, k)}")
    if not 0 <= recipe.warmup < 1:
        raise TrainError(f"--warmup must lie in [0, 1); got {recipe.warmup}")
    for k in ("lr", "lambda_rec", "lambda_rec_trans", "lambda_rec_pred", "lambda_equ", "lambda_sym", "clip_grad"):
        if not 0 <= getattr(recipe, k) < float("inf"):
            raise TrainError(f"--{k.replace('_', '-')} must be finite and >= 0; got {getattr(recipe, k)}")
    if [s for s in recipe.passes.split(",") if s.strip() not in PASSES]:
        raise TrainError(f"--passes {recipe.passes}: choose from {', '.join(PASSES)}")
    return recipe


# --- the models ---------------------------------------------------------------------------
def build_models(recipe: Recipe) -> tuple[ModularAutoencoder, EquivarianceCodebook]:
    """The autoencoder (weights: kaiming normal, fan_out, as the authors' tools, times
    ``init_scale``) and its table of equivariance matrices."""
    ae = ModularAutoencoder(AutoencoderConfig(gonlin=recipe.gonlin, n_vector=recipe.n_vector, vector_length=recipe.vector_length,
                                              stride=recipe.stride, kernel_size=recipe.kernel_size, activation=recipe.activation,
                                              groups=[]))
    for m in ae.gonlin.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            m.weight.data.mul_(recipe.init_scale)
    codebook = EquivarianceCodebook(ae.n_vector, ae.vector_length, recipe.codebook_translate, recipe.codebook_rotate,
                                    recipe.codebook_init)
    return ae, codebook


def make_trainee(recipe: Recipe) -> Trainee:
    """The autoencoder, its table and the weighted loss terms, as one module."""
    ae, codebook = build_models(recipe)
    weights = LossWeights(rec=recipe.lambda_rec, rec_trans=recipe.lambda_rec_trans, rec_pred=recipe.lambda_rec_pred,
                          equ=recipe.lambda_equ, sym=recipe.lambda_sym)
    return Trainee(ae, codebook, weights, temperature=recipe.temperature, mask_margin=recipe.mask_margin,
                   passes=[s.strip() for s in recipe.passes.split(",") if s.strip()])


def make_scheduler(optimizer, recipe: Recipe):
    """One-cycle: linear warm-up over ``warmup``*steps to ``lr``, then cosine to ~0 (the authors'
    OneCycleLR with anneal_strategy='cos')."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.steps + 1,
                                               pct_start=recipe.warmup, anneal_strategy="cos", cycle_momentum=False)


def sample_image(images: ImageSet, side: int = 192) -> torch.Tensor:
    """A fixed centre crop of the first readable image, for the sheets (3xSxS in [0, 1])."""
    _, img = images.load_good(0)
    s = min(side, *img.shape[1:])
    y0, x0 = (img.shape[1] - s) // 2, (img.shape[2] - s) // 2
    return img[:, y0:y0 + s, x0:x0 + s].float() / 255


# --- the run ------------------------------------------------------------------------------
class Training:
    """One run: built in ``__init__``, trained by :meth:`train`."""

    def __init__(self, recipe: Recipe, options: Options, checkpoint: dict | None, argv: list[str], dist: Dist):
        self.recipe, self.options, self.argv, self.dist = recipe, options, argv, dist
        self.out = options.out
        self.work_dir = options.work_dir or runtime.default_work_dir(options.out)
        # the command that started the run (a resumed run keeps it and lists its own resumptions)
        self.first_argv = list(checkpoint["argv"]) if checkpoint else list(argv)
        self.resumes = (list(checkpoint.get("resumes", [])) + [list(argv)]) if checkpoint else []
        device = dist.device
        # bf16 autocast: the default on CUDA, asked for on the CPU (where it runs, slower than fp32 on most CPUs)
        self.amp = options.precision == "bf16" or (options.precision == "auto" and device.type == "cuda")
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = not options.deterministic
        if options.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)

        # models, optimiser, schedule
        torch.manual_seed(recipe.seed)
        self.trainee = make_trainee(recipe).to(device)
        ae = self.trainee.ae
        if recipe.crop < ae.kernel_size + 2 * ae.stride:
            raise TrainError(f"--crop {recipe.crop}: too small for the {ae.kernel_size}x{ae.kernel_size} kernel "
                             f"at stride {ae.stride}; use at least {ae.kernel_size + 2 * ae.stride}")
        self.optimizer = torch.optim.AdamW(self.trainee.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                           eps=recipe.eps)
        self.scheduler = make_scheduler(self.optimizer, recipe)
        self.step = 0
        self.skipped: dict[str, str] = {}  # image name -> reason
        self.last_losses: dict[str, float] = {}
        self.wall_before = 0.0
        if checkpoint is not None:
            def restore():
                self.trainee.load_state_dict(checkpoint["model"])
                self.optimizer.load_state_dict(checkpoint["optimizer"])
                self.scheduler.load_state_dict(checkpoint["scheduler"])
                runtime.set_rng_state(checkpoint["rng"], device)
                self.step = int(checkpoint["step"])
                self.skipped = {str(k): str(v) for k, v in dict(checkpoint.get("skipped", {})).items()}
                self.last_losses = {str(k): float(v) for k, v in dict(checkpoint.get("last_losses", {})).items()}
                self.wall_before = float(checkpoint.get("wall_s", 0.0))

            runtime.load_weights("state", restore, checkpoint["path"])
        self.model = dist.wrap(self.trainee, broadcast_buffers=False)
        self.forward = torch.compile(self.model) if options.compile else self.model

        # data
        kw = {"resize": recipe.resize, "cache_mb": options.cache_mb}
        self.images = ImageSet.from_folder(recipe.data, **kw) if recipe.data else ImageSet.from_skimage(**kw)
        plan = Plan(len(self.images), recipe.batch_size, recipe.seed, recipe.max_translate, recipe.max_rotate)
        self.batches = CropBatches(self.images, plan, recipe.crop, dist.rank, dist.world_size)

        # files (rank 0): leftovers of killed writes go, the log continues at this step
        self.log = runtime.open_work_dir(self.out, self.work_dir, self.step, dist)

    # --- the loop ---------------------------------------------------------------------
    def train(self) -> int:
        """Train to ``recipe.steps`` (or until stopped); 0 when the model file is written, 130 when stopped."""
        recipe, options, dist = self.recipe, self.options, self.dist
        self.t_start = time.perf_counter()
        self.sample = sample_image(self.images)
        self.announce()
        workers = options.workers if options.workers >= 0 else (0 if not recipe.data else min(4, os.cpu_count() or 1))
        loader = torch.utils.data.DataLoader(
            self.batches, batch_size=None, sampler=StepSampler(self.step, recipe.steps), num_workers=workers,
            pin_memory=dist.cuda, prefetch_factor=4 if workers else None)
        bar = runtime.progress(total=recipe.steps, initial=self.step, enabled=dist.is_main and options.progress)
        sums: dict[str, torch.Tensor] = {}
        n_summed, t_log, first_step, stopped = 0, time.perf_counter(), self.step, False
        with StopSignal(announce=dist.is_main) as stop:
            for batch in loader:
                terms = self.train_step(batch)
                self.step += 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0) + v
                n_summed += 1
                if self.step % options.log_every == 0 or self.step == recipe.steps:
                    t_log = self.log_metrics(sums, n_summed, t_log, bar)
                    sums, n_summed = {}, 0
                bar.update(1)
                if options.sheet_every and self.step % options.sheet_every == 0:
                    self.write_sheet()
                if self.step % options.ckpt_every == 0 and self.step < recipe.steps:
                    self.check_losses(sums)
                    self.save_checkpoint()
                want_stop = stop.requested or (options.stop_after and self.step - first_step >= options.stop_after)
                if self.step < recipe.steps and dist.any(bool(want_stop)):
                    stopped = True
                    break
        bar.close()
        self.check_losses(sums)
        path = self.save_checkpoint()
        if stopped:
            if dist.is_main:
                work_dir = f" --work-dir {shlex.quote(self.work_dir)}" if self.options.work_dir else ""
                print(f"stopped at step {self.step}/{recipe.steps}; checkpoint {path}\nresume with: "
                      f"python -m train.autoencoder --resume auto --out {shlex.quote(self.out)}{work_dir}",
                      file=sys.stderr)
            dist.barrier()
            return 130
        self.write_sheet()
        self.write_model()
        if dist.is_main:
            print(f"wrote {self.out} after {self.step} steps; final losses "
                  + ", ".join(f"{k} {v:.4g}" for k, v in self.last_losses.items() if not k.startswith("valid")),
                  file=sys.stderr)
        dist.barrier()
        return 0

    def announce(self) -> None:
        """The recipe and where things go, once at the start (rank 0)."""
        if not self.dist.is_main:
            return
        recipe, dist = self.recipe, self.dist
        print("recipe: " + json.dumps(asdict(recipe)), file=sys.stderr)
        print(f"data: {self.images.description}; {recipe.steps} steps x {recipe.batch_size} crops of {recipe.crop}px; "
              f"device {dist.device} x {dist.world_size}; starting at step {self.step}; work dir {self.work_dir}",
              file=sys.stderr)
        self.log.write({"step": self.step, "event": "start", "recipe": asdict(recipe), "world_size": dist.world_size})

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch -> loss terms -> one AdamW step. Returns the detached terms (``loss``: the total)."""
        device = self.dist.device
        assert batch["step"] == self.step, (batch["step"], self.step)
        for index, reason in {**batch["bad"], **self.images.bad}.items():  # loader workers' finds and ours
            self.skipped[self.images.name(index)] = reason
        images = batch["images"].to(device, non_blocking=True)
        transforms = self.batches.transforms(self.step, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
            terms = self.forward(images, transforms)
        loss = terms.pop("total")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.recipe.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.trainee.parameters(), self.recipe.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.detach().float(), **{k: v.detach().float() for k, v in terms.items()}}

    def check_losses(self, sums: dict) -> None:
        """Stop (TrainError) before anything is written when a loss since the last log is not finite
        (decided over all ranks, so that every rank stops on the same step)."""
        if sums:
            runtime.check_finite(self.dist.mean({k: float(v) for k, v in sums.items()}), self.step)

    def log_metrics(self, sums: dict, n: int, t_log: float, bar) -> float:
        """Mean loss terms since the last line, over ranks, to metrics.jsonl and the bar."""
        terms = self.dist.mean({k: float(v) / n for k, v in sums.items()})
        runtime.check_finite(terms, self.step)
        now = time.perf_counter()
        images_s = n * self.recipe.batch_size / max(now - t_log, 1e-9)
        self.skipped = self.dist.merge(self.skipped)
        skipped = runtime.skipped_counts(self.skipped, self.images.scan_skipped)
        self.log.write({"step": self.step, "lr": self.scheduler.get_last_lr()[0], **terms, "img_s": images_s,
                        "skipped_files": sum(skipped.values()), "wall_s": self.wall_before + now - self.t_start})
        self.last_losses = terms
        bar.set_postfix(**{k: f"{v:.4g}" for k, v in terms.items() if not k.startswith("valid")},
                        img_s=f"{images_s:.1f}", refresh=False)
        return now

    # --- files ----------------------------------------------------------------------------
    def save_checkpoint(self) -> str | None:
        """Everything to continue exactly (rank 0 writes; the newest ``--keep`` stay)."""
        rng = runtime.rng_state(self.dist.device)
        self.skipped = self.dist.merge(self.skipped)
        if not self.dist.is_main:
            return None
        state = {"recipe": asdict(self.recipe), "options": asdict(self.options),
                 "model": self.trainee.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": rng, "skipped": dict(self.skipped),
                 "last_losses": self.last_losses, "wall_s": self.wall_before + (time.perf_counter() - self.t_start),
                 "argv": self.first_argv, "resumes": self.resumes, "world_size": self.dist.world_size}
        return runtime.save_checkpoint(state, self.work_dir, self.step, TRAINER, self.options.keep)

    def write_sheet(self) -> None:
        """PNG of every module's kernels and its features of the sample image (rank 0)."""
        if not self.dist.is_main:
            return
        from .viz import module_sheet, save_png

        ae = self.trainee.ae
        was_training = ae.training
        ae.eval()
        try:
            sheet = module_sheet(ae, self.sample)
        finally:
            ae.train(was_training)
        save_png(sheet, os.path.join(self.work_dir, "sheets", f"modules_{self.step:08d}.png"))

    def command(self, argv=None) -> str:
        launcher = f"torchrun --nproc_per_node {self.dist.world_size} " if self.dist.enabled else "python "
        return launcher + "-m train.autoencoder " + shlex.join(self.first_argv if argv is None else argv)

    def write_model(self) -> None:
        """The output .safetensors: weights, derived (or given) groups, provenance (rank 0)."""
        if not self.dist.is_main:
            return
        from scg_models.analysis import derive_groups

        ae = self.trainee.ae
        if self.options.groups:
            try:
                with open(self.options.groups, encoding="utf-8") as fh:
                    groups = validate_groups(json.load(fh), ae.n_vector)
            except (OSError, ValueError) as e:
                raise TrainError(f"--groups {self.options.groups}: {e}") from None
            how = f"given ({self.options.groups})"
        else:
            groups = derive_groups(ae)
            how = "derived from the learned kernels (scg_models.analysis.derive_groups)"
        ae.set_groups(groups)
        skipped = runtime.skipped_counts(self.skipped, self.images.scan_skipped)
        info = {
            "source_format": "train.autoencoder", "command": self.command(), "data": self.images.description,
            "resumed_with": [self.command(a) for a in self.resumes],
            "steps": self.step, "images_seen": self.step * self.recipe.batch_size, "recipe": asdict(self.recipe),
            "world_size": self.dist.world_size, "device": str(self.dist.device),
            "precision": "bf16-autocast" if self.amp else "fp32", "groups": how,
            "final_losses": self.last_losses, "skipped_files": sum(skipped.values()), "skipped": skipped,
            "train_wall_s": round(self.wall_before + time.perf_counter() - self.t_start, 1),
            "torch": torch.__version__, "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        ae.cpu()
        scg_models.save_autoencoder(ae, self.out, info=info)
        ae.to(self.dist.device)
        self.log.write({"step": self.step, "event": "end", "out": self.out, "final_losses": self.last_losses,
                        "skipped": skipped})


def train(argv: list[str] | None = None) -> int:
    """The whole command: parse, start the processes, train, report skipped files."""
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe, options, checkpoint = parse(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    dist = Dist.start(options.device)
    try:
        run = Training(recipe, options, checkpoint, argv, dist)
        code = run.train()
        skipped = runtime.skipped_counts(run.skipped, run.images.scan_skipped)
        if sum(skipped.values()) and dist.is_main:
            print(f"skipped {runtime.describe_skipped(skipped)} of the image files", file=sys.stderr)
        return code
    finally:
        dist.close()


def main(argv: list[str] | None = None) -> int:
    return runtime.run_cli(lambda: train(argv))


__all__ = ["Options", "Recipe", "Training", "build_models", "build_parser", "main", "make_trainee", "parse", "train"]

if __name__ == "__main__":
    sys.exit(main())

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
process runs it), the command line (:func:`parse`), the models the recipe builds, then
:func:`train`; the run itself (build, the loop, the files) is :class:`train.ae_training.Training`.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields

import torch

from scg_models import AutoencoderConfig, ModularAutoencoder
from scg_models.gonlin import GONLINS

from . import runtime
from .loop import Renamed, RunOptions, add_run_arguments, help_with_defaults
from .losses import PASSES, EquivarianceCodebook, LossWeights, Trainee
from .runtime import Dist, TrainError

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
class Options(RunOptions):
    """How this process runs (may change between a run and its resumption); the shared flags are
    :class:`train.loop.RunOptions`."""

    cache_mb: float = 1024.0  # decoded-image cache per loader process, MiB
    groups: str | None = None  # JSON file of groups to write instead of the derived ones


#: Options a resumed run never takes from its checkpoint: where to read and write comes from the
#: command line only (a checkpoint's stored paths are reported, never used).
COMMAND_LINE_ONLY = ("out", "work_dir", "resume", "groups", "stop_after")
RECIPE_FIELDS = {f.name for f in fields(Recipe)}
OPTION_FIELDS = {f.name for f in fields(Options)}


# --- the command line ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.autoencoder", argument_default=argparse.SUPPRESS,
        formatter_class=help_with_defaults(Recipe(), Options()),
        description="Train SCG's modular autoencoder (reconstruction + equivariance + symmetry losses).",
        epilog="Defaults are the paper's recipe (AdamW, cosine from lr 0.005, 40k steps). See docs/training.md.")
    g = p.add_argument_group("data and output")
    g.add_argument("--data", help="folder of images (png/jpg/webp/bmp/tif, searched recursively); "
                   "default: the photographs scikit-image ships (pip install scikit-image)")
    g.add_argument("--out", help="output .safetensors (required, also when resuming)")
    g.add_argument("--groups", help="JSON file [{name, modules, description}, ...] to write instead of "
                   "the groups derived from the learned kernels")
    g.add_argument("--resize", type=int, help="scale images whose shorter side exceeds this down to it; 0: never")
    g.add_argument("--cache-mb", type=float, help="decoded-image cache per loader process, MiB")
    g = p.add_argument_group("schedule")
    g.add_argument("--steps", type=int, help="optimiser steps")
    g.add_argument("--batch-size", type=int, help="images per step, over all processes")
    g.add_argument("--crop", type=int, help="random crop side in pixels")
    g.add_argument("--lr", type=float, help="peak learning rate, AdamW + one-cycle cosine")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    g.add_argument("--eps", type=float, help="AdamW eps")
    g.add_argument("--warmup", type=float, help="fraction of steps warming up")
    g.add_argument("--clip-grad", type=float, help="clip the gradient norm to this; 0: off")
    g.add_argument("--max-grad-norm", dest="clip_grad", type=float, action=Renamed, new="--clip-grad")
    g.add_argument("--seed", type=int, help="seed of the initial weights, data order and transforms")
    g = p.add_argument_group("model")
    g.add_argument("--gonlin", choices=sorted(GONLINS), help="kernel factorisation")
    g.add_argument("--n-vector", type=int, help="modules")
    g.add_argument("--vector-length", type=int, help="channels per module")
    g.add_argument("--stride", type=int, help="encoder stride (4: the one Bipolar's cascade implies)")
    g.add_argument("--kernel-size", type=int, help="kernel size (Vanilla only; default 21)")
    g.add_argument("--activation", choices=["gelu", "relu"], help="feature activation (default none: f = I*W)")
    g.add_argument("--init-scale", type=float, help="factor weights start as kaiming normal (fan_out, the authors' "
                   "init) times this")
    g = p.add_argument_group("losses")
    g.add_argument("--lambda-rec", type=float, help="|D(f) - I|^2")
    g.add_argument("--lambda-rec-trans", type=float, help="|D(f') - I'|^2, per pass")
    g.add_argument("--lambda-rec-pred", type=float, help="|D(predicted f') - I'|^2, per pass "
                   "(the authors' later code; 0 as in the paper)")
    g.add_argument("--lambda-equ", type=float, help="equivariance lambda1, per pass; 0 gives the no-equivariance "
                   "ablation")
    g.add_argument("--lambda-sym", type=float, help="symmetry lambda2")
    g.add_argument("--temperature", type=float, help="softmax temperature T of the symmetry loss")
    g.add_argument("--passes", help="transform passes per step: trans, rot or trans,rot")
    g.add_argument("--max-translate", type=float, help="translations ~ U(+-this) in normalised units, the image "
                   "spanning [-1, 1] (0.3 = +-15%% of the side)")
    g.add_argument("--max-rotate", type=float, help="rotation pass angles ~ U(+-this) degrees")
    g.add_argument("--codebook-translate", type=int, help="table points per translation axis")
    g.add_argument("--codebook-rotate", type=int, help="table points over 360 degrees")
    g.add_argument("--codebook-init", type=float, help="table = identity + U(+-this) at start")
    g.add_argument("--mask-margin", type=float, help="pixels a feature's source keeps from the image border "
                   "(default: the kernel radius)")
    add_run_arguments(p, sheets="steps between PNG sheets of the modules; 0: only at the end",
                      workers="data-loading processes (default: 0 for the embedded photos, else up to 4)")
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
    options.check()
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


def make_optimizer(trainee: Trainee, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW over the autoencoder and its table."""
    return torch.optim.AdamW(trainee.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, eps=recipe.eps)


def make_scheduler(optimizer, recipe: Recipe):
    """One-cycle: linear warm-up over ``warmup``*steps to ``lr``, then cosine to ~0 (the authors'
    OneCycleLR with anneal_strategy='cos')."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.steps + 1,
                                               pct_start=recipe.warmup, anneal_strategy="cos", cycle_momentum=False)


# --- the command ----------------------------------------------------------------------------
def train(argv: list[str] | None = None) -> int:
    """The whole command: parse, start the processes, train, report skipped files. 0: the model
    file is written; 130: stopped early with a checkpoint; errors raise :class:`TrainError`."""
    from .ae_training import Training

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


__all__ = ["Options", "Recipe", "build_models", "build_parser", "main", "make_optimizer", "make_scheduler",
           "make_trainee", "parse", "train"]

if __name__ == "__main__":
    sys.exit(main())

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
the newest checkpoint in ``--work-dir`` (default ``NAME.train/`` next to ``--out``), given the
same command line. See docs/controlnet_training.md.

Reads top to bottom: the :class:`Recipe` (what defines a run: a resumed run must match it; printed
and saved in every checkpoint) and :class:`Options` (the command line), :func:`parse`, then
:func:`train`. The run (build, the loop, the files) is :class:`train.cn_training.Training`; one
optimiser step is :class:`train.cn_step.Trainer`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass

import torch

from scg_models.dtypes import DTYPES

from . import runtime
from .cn_step import EVAL_TIMESTEPS, SubsetTrainer, Trainer  # re-exported (__all__): benchmarks use them
from .loop import Renamed, RunOptions, add_run_arguments, help_with_defaults
from .runtime import Dist, TrainError

TRAINER = "controlnet"


@dataclass
class Recipe:
    """What defines a run: a resumed run must match every field (files by identity). Made from the
    :class:`Options` and the files when the run is built; printed at the start, saved in every checkpoint."""

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
    max_grad_norm: float  # --clip-grad
    precision: str
    caption_dropout: float
    data: str  # fingerprint of the image list and captions
    samples: int
    precompute: bool
    init: dict | None  # the ControlNet fine-tuned from (name, size), or None: the UNet's encoder
    subsets: dict | None = None  # any-subset training: the SubsetPolicy's probabilities; None: per-group


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


@dataclass
class Options(RunOptions):
    """The command line (``python -m train.controlnet --help``); defaults: the authors' recipe. The
    running flags both trainers share are :class:`train.loop.RunOptions`."""

    # what to train
    base: str = ""
    autoencoder: str = ""
    modules: str = ""
    data: str = ""
    captions: str | None = None
    init_controlnet: str | None = None
    # the recipe
    steps: int | None = None  # None: 5 epochs of the data, as the authors
    batch_size: int = 4  # per process and micro-step
    grad_accum: int = 1
    lr: float = 1e-5
    warmup: int = 0
    weight_decay: float = 1e-2
    clip_grad: float = 0.0
    resolution: int = 512
    caption_dropout: float = 0.0
    seed: int = 0
    subsets: bool = False
    p_group: float = 0.6
    p_module: float = 0.35
    p_none: float = 0.05
    # cost
    gradient_checkpointing: bool = True
    precompute: bool = False
    cache_dir: str | None = None
    save_dtype: str = "fp16"
    keep: int = 1
    # evaluation and sample sheets
    eval_every: int | None = None  # None: --ckpt-every
    eval_images: int = 8
    samples: int = 4
    sample_steps: int = 20
    sample_cfg: float = 7.5
    sampler: str = "euler"
    scheduler: str = "normal"
    comfyui: str | None = None


# --- the command line -----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m train.controlnet", description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS,
        formatter_class=help_with_defaults(Options()),
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
    g.add_argument("--batch-size", type=int, help="images per process and micro-step")
    g.add_argument("--grad-accum", type=int, help="micro-steps per optimiser step")
    g.add_argument("--lr", type=float, help="AdamW learning rate, constant after the warm-up")
    g.add_argument("--warmup", type=int, help="linear learning-rate warm-up steps")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    g.add_argument("--clip-grad", type=float, help="clip the gradient norm to this; 0: off")
    g.add_argument("--max-grad-norm", dest="clip_grad", type=float, action=Renamed, new="--clip-grad")
    g.add_argument("--resolution", type=int, help="square training size in pixels")
    g.add_argument("--caption-dropout", type=float, help="probability of training with the empty prompt")
    g.add_argument("--seed", type=int, help="data order, noise, timesteps, caption dropout, hint-block init")
    g = ap.add_argument_group("any-subset ControlNet (docs/any_subset.md)")
    g.add_argument("--subsets", action="store_true",
                   help="train one ControlNet for any module subset: per sample a random subset of --modules (the "
                        "pool, e.g. all) is drawn; the ControlNet gets its hint plus a presence mask of the kept modules")
    g.add_argument("--p-group", type=float, help="probability of a group-level draw (1..G whole groups)")
    g.add_argument("--p-module", type=float, help="probability of a module-level draw (1..M modules)")
    g.add_argument("--p-none", type=float, help="probability of a sample with no modules (no control)")
    g = ap.add_argument_group("cost")
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                   help="recompute block activations in the backward pass (less memory, ~25%% more compute; "
                        "default on)")
    g.add_argument("--precompute", action="store_true",
                   help="encode latents and text embeddings once into a cache on disk, then train from it")
    g.add_argument("--cache-dir", help="cache folder (default: .scg-cache/NAME next to --out)")
    g.add_argument("--save-dtype", choices=sorted(DTYPES), help="dtype of the output ControlNet weights (checkpoints "
                   "are always fp32)")
    g = ap.add_argument_group("evaluation and sample sheets")
    g.add_argument("--eval-every", type=int, help="fixed-noise loss every N steps (default: --ckpt-every)")
    g.add_argument("--eval-images", type=int, help="training images of the fixed-noise loss")
    g.add_argument("--samples", type=int, help="held-out images for the sample sheets (0: none)")
    g.add_argument("--sample-steps", type=int, help="sampler steps of a sheet")
    g.add_argument("--sample-cfg", type=float, help="classifier-free guidance of a sheet")
    g.add_argument("--sampler", help="a ComfyUI sampler name")
    g.add_argument("--scheduler", help="a ComfyUI scheduler name")
    g.add_argument("--comfyui", help="ComfyUI checkout (default: $COMFYUI_PATH, the ComfyUI holding this folder, "
                                     "~/comfy/ComfyUI)")
    add_run_arguments(ap, sheets="steps between sample sheets sheets/samples_STEP.png; 0: none",
                      workers="data-loading processes per GPU (default: min(8, CPUs per GPU))")
    return ap


def parse(argv: list[str]) -> Options:
    """The command line as :class:`Options`, checked (a :class:`TrainError` names the flag)."""
    options = Options(**vars(build_parser().parse_args(argv)))
    check(options)
    return options


def check(o: Options) -> None:
    o.check()
    for name in ("batch_size", "grad_accum", "resolution"):
        if getattr(o, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1")
    if o.steps is not None and o.steps < 1:
        raise TrainError("--steps must be >= 1")
    if not 0 <= o.caption_dropout <= 1:
        raise TrainError("--caption-dropout must be in [0, 1]")
    if not 0 < o.lr < math.inf:
        raise TrainError("--lr must be finite and > 0")
    if not o.out.endswith(".safetensors"):
        raise TrainError("--out must end in .safetensors (ComfyUI's ControlNet folder format)")
    subset_policy(o)


def subset_policy(options: Options):
    """The :class:`scg_models.subsets.SubsetPolicy` of ``--subsets`` (None without it); bad
    probabilities are a :class:`TrainError` naming the option."""
    from scg_models import SCGError
    from scg_models.subsets import SubsetPolicy

    if not options.subsets:
        return None
    try:
        return SubsetPolicy(options.p_group, options.p_module, options.p_none)
    except SCGError as e:  # names the option
        raise TrainError(str(e)) from None



# --- the command ----------------------------------------------------------------------------
def train(argv: list[str] | None = None) -> int:
    """The whole command: parse, start the processes, build, train. 0: finished; 130: stopped early
    with a checkpoint; errors raise :class:`TrainError` (any :class:`scg_models.SCGError`)."""
    from . import sd15
    from .cn_training import Training

    options = parse(list(sys.argv[1:] if argv is None else argv))
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.deterministic:  # before cuBLAS starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    dist = Dist.start(options.device, timeout_s=2 * 3600)
    try:
        sd15.import_comfy(options.comfyui, cpu=not dist.cuda)
        return Training(options, dist).train()
    finally:
        dist.close()


def main(argv: list[str] | None = None) -> int:
    """The command: 0 when the run finished, 130 when stopped early (a checkpoint written), 2 on an error."""
    return runtime.run_cli(lambda: train(argv))


__all__ = ["EVAL_TIMESTEPS", "Options", "Recipe", "SubsetTrainer", "Trainer", "autoencoder_sha256", "build_parser",
           "main", "parse", "train"]

if __name__ == "__main__":
    sys.exit(main())

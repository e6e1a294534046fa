"""Train SCG's modular autoencoder with the equivariance and symmetry losses.

    python -m train.autoencoder --out my_model.safetensors [--data FOLDER] [--steps 40000] ...
    python -m train.autoencoder --resume auto --out my_model.safetensors     # continue exactly
    torchrun --standalone --nproc_per_node 4 -m train.autoencoder --device cuda --out m.safetensors

Without ``--data`` it trains on the photographs that scikit-image ships in its package.
The output is a ``.safetensors`` that ``scg_models.load_autoencoder`` (and the ComfyUI
loader) read as is, with groups derived from the learned kernels and the exact command,
data and step count in its metadata. Checkpoints, ``metrics.jsonl`` and PNG sheets of the
modules go to ``--work-dir`` (default: next to ``--out``, ``<name>.train/``).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import shlex
import signal
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone

import torch

import scg_models
from scg_models import AutoencoderConfig, ModularAutoencoder
from scg_models.gonlin import GONLINS
from scg_models.groups import validate_groups

from . import distributed
from .data import CropBatches, DataError, ImageSet, Plan, StepSampler
from .losses import PASSES, EquivarianceCodebook, LossWeights, Trainee

CKPT_FORMAT = "scg_autoencoder_train_ckpt"

#: The recipe: what defines a run (a resumed run must keep every one of these).
RECIPE = {
    "data": None, "steps": 40000, "batch_size": 64, "crop": 128, "lr": 5e-3, "weight_decay": 1e-4,
    "eps": 1e-8, "warmup": 0.1, "clip_grad": 0.0, "seed": 0,
    "gonlin": "Bipolar", "n_vector": 16, "vector_length": 4, "stride": 4, "kernel_size": None,
    "activation": None, "max_translate": 0.3, "max_rotate": 180.0, "passes": "trans,rot",
    "lambda_rec": 1.0, "lambda_rec_trans": 1.0, "lambda_rec_pred": 0.0, "lambda_equ": 1.0, "lambda_sym": 0.1,
    "temperature": 0.1, "codebook_translate": 9, "codebook_rotate": 16, "codebook_init": 1e-2,
    "init_scale": 1.0, "mask_margin": None, "resize": 512,
}
#: How this process runs (may change between a run and its resumption).
RUNTIME = {
    "out": None, "work_dir": None, "resume": None, "device": "auto", "precision": "auto", "compile": False,
    "deterministic": False, "threads": 0, "workers": -1, "cache_mb": 1024.0, "log_every": 10,
    "ckpt_every": 1000, "sheet_every": 1000, "keep": 3, "groups": None, "progress": True, "stop_after": 0,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.autoencoder", argument_default=argparse.SUPPRESS,
        description="Train SCG's modular autoencoder (reconstruction + equivariance + symmetry losses).",
        epilog="Defaults are the paper's recipe (AdamW, cosine from lr 0.005, 40k steps). See docs/training.md.")
    d = {**RECIPE, **RUNTIME}
    g = p.add_argument_group("data and output")
    g.add_argument("--data", help="folder of images (jpg/png/webp, searched recursively); "
                   "default: the photographs scikit-image ships (pip install scikit-image)")
    g.add_argument("--out", help="output .safetensors (required unless --resume names a checkpoint)")
    g.add_argument("--work-dir", help="checkpoints, metrics.jsonl and PNG sheets (default: <out>.train/)")
    g.add_argument("--resume", help="'auto' (latest checkpoint in --work-dir) or a checkpoint path; "
                   "continues exactly where it stopped")
    g.add_argument("--groups", help="JSON file [{name, modules, description}, ...] to write instead of "
                   "the groups derived from the learned kernels")
    g.add_argument("--resize", type=int, help=f"scale images whose shorter side exceeds this down to it; 0: never "
                   f"(default {d['resize']})")
    g = p.add_argument_group("schedule")
    g.add_argument("--steps", type=int, help=f"optimiser steps (default {d['steps']})")
    g.add_argument("--batch-size", type=int, help=f"images per step, over all processes (default {d['batch_size']})")
    g.add_argument("--crop", type=int, help=f"random crop side in pixels (default {d['crop']})")
    g.add_argument("--lr", type=float, help=f"peak learning rate, AdamW + one-cycle cosine (default {d['lr']})")
    g.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {d['weight_decay']})")
    g.add_argument("--eps", type=float, help=f"AdamW eps (default {d['eps']})")
    g.add_argument("--warmup", type=float, help=f"fraction of steps warming up (default {d['warmup']})")
    g.add_argument("--clip-grad", type=float, help="clip the gradient norm to this; 0: off (default)")
    g.add_argument("--seed", type=int,
                   help=f"seed of the initial weights, data order and transforms (default {d['seed']})")
    g = p.add_argument_group("model")
    g.add_argument("--gonlin", choices=sorted(GONLINS), help="kernel factorisation (default Bipolar)")
    g.add_argument("--n-vector", type=int, help=f"modules (default {d['n_vector']})")
    g.add_argument("--vector-length", type=int, help=f"channels per module (default {d['vector_length']})")
    g.add_argument("--stride", type=int, help="encoder stride (default 4, the one Bipolar's cascade implies)")
    g.add_argument("--kernel-size", type=int, help="kernel size (Vanilla only; default 21)")
    g.add_argument("--activation", choices=["gelu", "relu"], help="feature activation (default none: f = I∗W)")
    g.add_argument("--init-scale", type=float, help="factor weights start as kaiming normal (fan_out, the authors' "
                   "init) times this (default 1)")
    g = p.add_argument_group("losses")
    g.add_argument("--lambda-rec", type=float, help=f"‖D(f) − I‖² (default {d['lambda_rec']})")
    g.add_argument("--lambda-rec-trans", type=float, help=f"‖D(f′) − I′‖², per pass (default {d['lambda_rec_trans']})")
    g.add_argument("--lambda-rec-pred", type=float, help="‖D(f̂′) − I′‖² from predicted features, per pass "
                   "(the authors' later code; default 0 as in the paper)")
    g.add_argument("--lambda-equ", type=float, help=f"equivariance λ1, per pass (default {d['lambda_equ']}); "
                   "0 gives the no-equivariance ablation")
    g.add_argument("--lambda-sym", type=float, help=f"symmetry λ2 (default {d['lambda_sym']})")
    g.add_argument("--temperature", type=float,
                   help=f"softmax temperature T of the symmetry loss (default {d['temperature']})")
    g.add_argument("--passes", help="transform passes per step: trans, rot or trans,rot (default)")
    g.add_argument("--max-translate", type=float, help="translations ~ U(±this) in normalised units, the image "
                   f"spanning [-1, 1] (default {d['max_translate']} = ±15%% of the side)")
    g.add_argument("--max-rotate", type=float,
                   help=f"rotation pass angles ~ U(±this) degrees (default {d['max_rotate']})")
    g.add_argument("--codebook-translate", type=int,
                   help=f"table points per translation axis (default {d['codebook_translate']})")
    g.add_argument("--codebook-rotate", type=int, help=f"table points over 360° (default {d['codebook_rotate']})")
    g.add_argument("--codebook-init", type=float, help="table = identity + U(±this) at start (default 0.01)")
    g.add_argument("--mask-margin", type=float, help="pixels a feature's source keeps from the image border "
                   "(default: the kernel radius)")
    g = p.add_argument_group("running")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N; under torchrun one GPU per process")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="auto: bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the training step")
    g.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (the CPU always is)")
    g.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    g.add_argument("--workers", type=int, help="data-loading processes (default: 0 for the embedded photos, "
                   "else up to 4)")
    g.add_argument("--cache-mb", type=float, help="decoded-image cache per loader process, MiB (default 1024)")
    g.add_argument("--log-every", type=int, help=f"steps between metrics lines (default {d['log_every']})")
    g.add_argument("--ckpt-every", type=int, help=f"steps between checkpoints (default {d['ckpt_every']})")
    g.add_argument("--sheet-every", type=int,
                   help=f"steps between PNG sheets; 0: only at the end (default {d['sheet_every']})")
    g.add_argument("--keep", type=int, help=f"checkpoints kept (default {d['keep']})")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # stop (as Ctrl-C) after N steps of this run
    return p


# --- small helpers ------------------------------------------------------------------------
def _atomic_torch_save(obj, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def checkpoints(work_dir: str) -> list[str]:
    """Checkpoints in ``work_dir``, oldest first."""
    return sorted(glob.glob(os.path.join(work_dir, "ckpts", "step_*.pt")))


def build_models(r: dict) -> tuple[ModularAutoencoder, EquivarianceCodebook]:
    """The autoencoder (weights: kaiming normal, fan_out, as the authors' tools, times
    ``init_scale``) and its table."""
    cfg = AutoencoderConfig(gonlin=r["gonlin"], n_vector=r["n_vector"], vector_length=r["vector_length"],
                            stride=r["stride"], kernel_size=r["kernel_size"], activation=r["activation"],
                            groups=[])
    ae = ModularAutoencoder(cfg)
    for m in ae.gonlin.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            m.weight.data.mul_(r["init_scale"])
    cb = EquivarianceCodebook(ae.n_vector, ae.vector_length, r["codebook_translate"], r["codebook_rotate"],
                              r["codebook_init"])
    return ae, cb


def make_trainee(r: dict) -> Trainee:
    ae, cb = build_models(r)
    w = LossWeights(rec=r["lambda_rec"], rec_trans=r["lambda_rec_trans"], rec_pred=r["lambda_rec_pred"],
                    equ=r["lambda_equ"], sym=r["lambda_sym"])
    return Trainee(ae, cb, w, temperature=r["temperature"], mask_margin=r["mask_margin"],
                   passes=[s.strip() for s in r["passes"].split(",") if s.strip()])


def make_scheduler(opt, r: dict):
    """One-cycle: linear warm-up over ``warmup``·steps to ``lr``, then cosine to ~0 (the authors'
    OneCycleLR with anneal_strategy='cos')."""
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], total_steps=r["steps"] + 1,
                                               pct_start=r["warmup"], anneal_strategy="cos", cycle_momentum=False)


def open_images(r: dict, rt: dict) -> ImageSet:
    kw = {"resize": r["resize"], "cache_mb": rt["cache_mb"]}
    return ImageSet.from_folder(r["data"], **kw) if r["data"] else ImageSet.from_skimage(**kw)


def sample_image(images: ImageSet, side: int = 192) -> torch.Tensor:
    """A fixed centre crop of the first readable image, for the sheets (3×S×S in [0, 1])."""
    _, img = images.load_good(0)
    s = min(side, *img.shape[1:])
    y0, x0 = (img.shape[1] - s) // 2, (img.shape[2] - s) // 2
    return img[:, y0:y0 + s, x0:x0 + s].float() / 255


def resolve_args(argv) -> tuple[dict, dict, dict | None, list[str]]:
    """(recipe, runtime, checkpoint or None, argv) from the command line and, when resuming,
    the checkpoint (whose recipe wins; a contradicting flag is an error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given = vars(build_parser().parse_args(argv))
    rt = {**RUNTIME, **{k: v for k, v in given.items() if k in RUNTIME}}
    ckpt = None
    if rt["resume"]:
        path = rt["resume"]
        if path == "auto":
            if not rt["work_dir"] and not rt["out"]:
                raise SystemExit("--resume auto: give --out or --work-dir so the checkpoints can be found")
            wd = rt["work_dir"] or default_work_dir(rt["out"])
            found = checkpoints(wd)
            path = found[-1] if found else None
            if path is None:
                print(f"--resume auto: no checkpoint in {wd}/ckpts; starting from step 0", file=sys.stderr)
        if path is not None:
            if not os.path.isfile(path):
                raise SystemExit(f"--resume {path}: no such checkpoint")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if ckpt.get("format") != CKPT_FORMAT:
                raise SystemExit(f"--resume {path}: not a train.autoencoder checkpoint")
            ckpt["path"] = path
            clash = {k: (v, ckpt["recipe"][k]) for k, v in given.items()
                     if k in RECIPE and ckpt["recipe"].get(k) != v}
            if clash:
                k, (v, old) = next(iter(clash.items()))
                raise SystemExit(f"--resume: --{k.replace('_', '-')} {v} differs from the checkpoint's {old}; "
                                 "a resumed run continues the same recipe (start a new run to change it)")
            recipe = dict(ckpt["recipe"])
            # how the run ran carries over too, unless this command line says otherwise
            saved = {k: v for k, v in ckpt["runtime"].items() if k in RUNTIME and k not in ("resume", "stop_after")}
            rt = {**RUNTIME, **saved, **{k: v for k, v in given.items() if k in RUNTIME}}
            return recipe, rt, ckpt, argv
    recipe = {**RECIPE, **{k: v for k, v in given.items() if k in RECIPE}}
    if not rt["out"]:
        raise SystemExit("--out FILE.safetensors is required")
    return recipe, rt, ckpt, argv


def default_work_dir(out: str) -> str:
    base = re.sub(r"\.safetensors$", "", os.fspath(out))
    return base + ".train"


def check_recipe(r: dict) -> None:
    for k in ("steps", "batch_size", "crop", "n_vector", "vector_length", "stride"):
        if r[k] is not None and int(r[k]) < 1:
            raise SystemExit(f"--{k.replace('_', '-')} must be ≥ 1; got {r[k]}")
    if not 0 <= r["warmup"] < 1:
        raise SystemExit(f"--warmup must lie in [0, 1); got {r['warmup']}")
    for k in ("lambda_rec", "lambda_rec_trans", "lambda_rec_pred", "lambda_equ", "lambda_sym"):
        if not r[k] >= 0:
            raise SystemExit(f"--{k.replace('_', '-')} must be ≥ 0; got {r[k]}")
    bad = [s for s in r["passes"].split(",") if s.strip() not in PASSES]
    if bad:
        raise SystemExit(f"--passes {r['passes']}: choose from {', '.join(PASSES)}")


# --- the run ------------------------------------------------------------------------------
class Run:
    def __init__(self, recipe: dict, rt: dict, ckpt: dict | None, argv: list[str]):
        self.r, self.rt, self.argv = recipe, rt, argv
        # the command that started the run (a resumed run keeps it and lists its own resumptions)
        self.first_argv = list(ckpt["argv"]) if ckpt is not None else list(argv)
        self.resumes = (list(ckpt.get("resumes", [])) + [list(argv)]) if ckpt is not None else []
        check_recipe(recipe)
        if rt["threads"]:
            torch.set_num_threads(rt["threads"])
        self.d = distributed.init(rt["device"])
        dev = self.d.device
        self.work_dir = rt["work_dir"] or default_work_dir(rt["out"])
        rt["work_dir"] = self.work_dir
        prec = rt["precision"]
        self.amp = dev.type == "cuda" and prec in ("auto", "bf16")
        if prec == "bf16" and dev.type != "cuda":
            raise SystemExit("--precision bf16 needs --device cuda (CPU training runs in fp32)")
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = not rt["deterministic"]
        if rt["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)

        torch.manual_seed(recipe["seed"])
        self.trainee = make_trainee(recipe).to(dev)
        self.opt = torch.optim.AdamW(self.trainee.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"],
                                     eps=recipe["eps"])
        self.sched = make_scheduler(self.opt, recipe)
        self.step = 0
        self.skipped: set[str] = set()
        self.wall_before = 0.0
        if ckpt is not None:
            self.trainee.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            self.step = int(ckpt["step"])
            self.skipped = set(ckpt.get("skipped_files", []))
            self.wall_before = float(ckpt.get("wall_s", 0.0))
            torch.set_rng_state(ckpt["rng"]["torch"])
            if dev.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], dev)
        ae = self.trainee.ae
        if recipe["crop"] < ae.kernel_size + 2 * ae.stride:
            raise SystemExit(f"--crop {recipe['crop']}: too small for the {ae.kernel_size}×{ae.kernel_size} kernel "
                             f"at stride {ae.stride}; use at least {ae.kernel_size + 2 * ae.stride}")
        self.model = distributed.wrap(self.trainee, self.d)
        self.forward = torch.compile(self.model) if rt["compile"] else self.model

        self.images = open_images(recipe, rt)
        self.plan = Plan(len(self.images), recipe["batch_size"], recipe["seed"], recipe["max_translate"],
                         recipe["max_rotate"])
        self.batches = CropBatches(self.images, self.plan, recipe["crop"], self.d.rank, self.d.world_size)
        self.stop_requested = False
        if self.d.is_main:
            os.makedirs(os.path.join(self.work_dir, "ckpts"), exist_ok=True)
            os.makedirs(os.path.join(self.work_dir, "sheets"), exist_ok=True)
            self.metrics_path = os.path.join(self.work_dir, "metrics.jsonl")
            self._trim_metrics()

    # --- files ------------------------------------------------------------------------
    def _trim_metrics(self) -> None:
        """Drop metric lines past the step we (re)start from (a run stopped after its checkpoint)."""
        if not os.path.exists(self.metrics_path):
            return
        keep = []
        with open(self.metrics_path) as fh:
            for line in fh:
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        keep.append(line)
                except ValueError:
                    pass
        with open(self.metrics_path, "w") as fh:
            fh.writelines(keep)

    def save_checkpoint(self) -> str | None:
        if not self.d.is_main:
            return None
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.d.device) if self.d.device.type == "cuda" else None}
        obj = {"format": CKPT_FORMAT, "version": 1, "step": self.step, "recipe": self.r,
               "runtime": dict(self.rt),
               "model": self.trainee.state_dict(), "optimizer": self.opt.state_dict(),
               "scheduler": self.sched.state_dict(), "rng": rng, "skipped_files": sorted(self.skipped),
               "wall_s": self.wall_before + (time.perf_counter() - self.t_start),
               "argv": self.first_argv, "resumes": self.resumes, "world_size": self.d.world_size}
        path = os.path.join(self.work_dir, "ckpts", f"step_{self.step:08d}.pt")
        _atomic_torch_save(obj, path)
        for old in checkpoints(self.work_dir)[:-max(1, self.rt["keep"])]:
            os.unlink(old)
        return path

    def write_sheet(self) -> None:
        if not self.d.is_main:
            return
        from .viz import module_sheet, save_png

        ae = self.trainee.ae
        was = ae.training
        ae.eval()
        try:
            sheet = module_sheet(ae, self._sample)
        finally:
            ae.train(was)
        save_png(sheet, os.path.join(self.work_dir, "sheets", f"modules_{self.step:08d}.png"))

    def log(self, rec: dict) -> None:
        if self.d.is_main:
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")

    def command(self, argv=None) -> str:
        launcher = "torchrun --nproc_per_node {} ".format(self.d.world_size) if self.d.enabled else "python "
        return launcher + "-m train.autoencoder " + shlex.join(self.first_argv if argv is None else argv)

    def write_model(self, final_losses: dict) -> None:
        """The output .safetensors: weights, derived (or given) groups, provenance."""
        if not self.d.is_main:
            return
        from scg_models.analysis import derive_groups

        ae = self.trainee.ae
        if self.rt["groups"]:
            with open(self.rt["groups"]) as fh:
                groups = validate_groups(json.load(fh), ae.n_vector)
            how = f"given ({self.rt['groups']})"
        else:
            groups = derive_groups(ae)
            how = "derived from the learned kernels (scg_models.analysis.derive_groups)"
        ae.set_groups(groups)
        info = {
            "source_format": "train.autoencoder", "command": self.command(), "data": self.images.description,
            "resumed_with": [self.command(a) for a in self.resumes],
            "steps": self.step, "images_seen": self.step * self.r["batch_size"], "recipe": self.r,
            "world_size": self.d.world_size, "device": str(self.d.device),
            "precision": "bf16-autocast" if self.amp else "fp32", "groups": how,
            "final_losses": final_losses, "skipped_files": len(self.skipped),
            "train_wall_s": round(self.wall_before + time.perf_counter() - self.t_start, 1),
            "torch": torch.__version__, "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        ae.cpu()
        scg_models.save_autoencoder(ae, self.rt["out"], info=info)
        ae.to(self.d.device)

    # --- the loop ---------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        if self.stop_requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop_requested = True
        if self.d.is_main:
            print(f"\n{signal.Signals(signum).name}: finishing step {self.step + 1}, writing a checkpoint "
                  "(press Ctrl-C again to abort without one)", file=sys.stderr)

    def run(self) -> int:
        r, rt, d = self.r, self.rt, self.d
        self.t_start = time.perf_counter()
        self._sample = sample_image(self.images)
        workers = rt["workers"] if rt["workers"] >= 0 else (0 if not r["data"] else min(4, os.cpu_count() or 1))
        loader = torch.utils.data.DataLoader(
            self.batches, batch_size=None, sampler=StepSampler(self.step, r["steps"]), num_workers=workers,
            pin_memory=d.device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if workers else None)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = None
        try:
            from tqdm import tqdm
        except ImportError:  # the bar is optional (requirements-dev.txt); metrics.jsonl is always written
            tqdm = None
        if d.is_main and rt["progress"] and tqdm is not None:
            bar = tqdm(total=r["steps"], initial=self.step, unit="step", dynamic_ncols=True,
                       mininterval=1.0 if sys.stderr.isatty() else 30.0, desc="train")
        if d.is_main:
            print(f"data: {self.images.description}; {r['steps']} steps × {r['batch_size']} crops of {r['crop']}²; "
                  f"device {d.device} × {d.world_size}; work dir {self.work_dir}", file=sys.stderr)
        acc: dict[str, torch.Tensor] = {}
        n_acc, t_log, stopped, started_at = 0, time.perf_counter(), False, self.step
        last: dict[str, float] = {}
        try:
            for batch in loader:
                s = batch["step"]
                assert s == self.step, (s, self.step)
                for j in {**batch["bad"], **self.images.bad}:  # loader workers' finds and this process's
                    self.skipped.add(self.images.name(j))
                x = batch["images"].to(d.device, non_blocking=True)
                tr = self.batches.transforms(s, d.device)
                with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    out = self.forward(x, tr)
                loss = out["total"]
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if r["clip_grad"]:
                    torch.nn.utils.clip_grad_norm_(self.trainee.parameters(), r["clip_grad"])
                self.opt.step()
                self.sched.step()
                self.step += 1
                for k, v in out.items():
                    acc[k] = acc.get(k, 0) + v.detach().float()
                n_acc += 1
                if self.step % rt["log_every"] == 0 or self.step == r["steps"]:
                    terms = distributed.mean_dict({k: float(v) / n_acc for k, v in acc.items()}, d)
                    if not math.isfinite(terms["total"]):
                        raise FloatingPointError(f"step {self.step}: the loss is {terms['total']}; the last "
                                                 "checkpoint is intact (try a lower --lr or --clip-grad 1)")
                    now = time.perf_counter()
                    ips = n_acc * r["batch_size"] / max(now - t_log, 1e-9)
                    self.skipped = distributed.union_sets(self.skipped, d)
                    rec = {"step": self.step, "lr": self.sched.get_last_lr()[0], **terms, "img_s": ips,
                           "skipped_files": len(self.skipped),
                           "wall_s": self.wall_before + now - self.t_start}
                    self.log(rec)
                    last = terms
                    if bar is not None:
                        show = {k: f"{v:.4g}" for k, v in terms.items() if not k.startswith("valid")}
                        bar.set_postfix(**show, img_s=f"{ips:.1f}", refresh=False)
                    acc, n_acc, t_log = {}, 0, now
                if bar is not None:
                    bar.update(1)
                if rt["sheet_every"] and self.step % rt["sheet_every"] == 0:
                    self.write_sheet()
                if self.step % rt["ckpt_every"] == 0 and self.step < r["steps"]:
                    self.save_checkpoint()
                want_stop = self.stop_requested or (rt["stop_after"] and self.step - started_at >= rt["stop_after"])
                if self.step < r["steps"] and distributed.any_flag(bool(want_stop), d):
                    stopped = True
                    break
        finally:
            for s_, h in old_handlers.items():
                signal.signal(s_, h)
            if bar is not None:
                bar.close()
        self.skipped = distributed.union_sets(self.skipped, d)
        path = self.save_checkpoint()
        if self.skipped and d.is_main:
            print(f"skipped {len(self.skipped)} unreadable file(s): {', '.join(sorted(self.skipped)[:5])}"
                  + (" …" if len(self.skipped) > 5 else ""), file=sys.stderr)
        if stopped:
            if d.is_main:
                print(f"stopped at step {self.step}/{r['steps']}; checkpoint {path}\nresume with: "
                      f"python -m train.autoencoder --resume {path}", file=sys.stderr)
            distributed.barrier(d)
            return 130
        self.write_sheet()
        self.write_model(last)
        if d.is_main:
            print(f"wrote {self.rt['out']} after {self.step} steps; final losses "
                  + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if not k.startswith("valid")), file=sys.stderr)
        distributed.barrier(d)
        return 0


def main(argv=None) -> int:
    recipe, rt, ckpt, argv = resolve_args(argv)
    warnings.filterwarnings("once", message="skipping unreadable image")
    try:
        run = Run(recipe, rt, ckpt, argv)
        code = run.run()
    except DataError as e:
        raise SystemExit(str(e)) from None
    finally:
        distributed.shutdown(distributed.Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))))
    return code


if __name__ == "__main__":
    sys.exit(main())

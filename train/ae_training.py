"""One run of ``python -m train.autoencoder`` (:mod:`train.autoencoder` parses the command line).

Reads top to bottom: :class:`Training` builds the run (devices, models, optimiser, resumed state,
data, work dir), :meth:`Training.train` is the loop (batch -> loss terms -> AdamW step -> log /
sheet / checkpoint at their intervals, :class:`train.loop.Loop`), then the files it writes.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone

import torch

import scg_models
from scg_models.groups import validate_groups

from . import runtime
from .autoencoder import TRAINER, Options, Recipe, make_optimizer, make_scheduler, make_trainee
from .data import CropBatches, ImageSet, Plan
from .loop import Loop
from .runtime import Dist, StepSampler, TrainError


def sample_image(images: ImageSet, side: int = 192) -> torch.Tensor:
    """A fixed centre crop of the first readable image, for the sheets (3xSxS in [0, 1])."""
    _, img = images.load_good(0)
    s = min(side, *img.shape[1:])
    y0, x0 = (img.shape[1] - s) // 2, (img.shape[2] - s) // 2
    return img[:, y0:y0 + s, x0:x0 + s].float() / 255


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
        self.optimizer = make_optimizer(self.trainee, recipe)
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
        loop = Loop(dist, self.step, recipe.steps, options.stop_after, progress=options.progress)
        workers = options.workers
        if workers is None or workers < 0:
            workers = 0 if not recipe.data else min(4, os.cpu_count() or 1)
        loader = torch.utils.data.DataLoader(
            self.batches, batch_size=None, sampler=StepSampler(self.step, loop.stop_at), num_workers=workers,
            pin_memory=dist.cuda, prefetch_factor=4 if workers else None)
        with loop:
            for batch in loader:
                terms = self.train_step(batch)
                self.step += 1
                loop.record(self.step, terms)
                if loop.every(options.log_every) or loop.ending:
                    self.log_metrics(loop)
                if loop.every(options.sheet_every) and not loop.ending:
                    loop.check()
                    self.write_sheet()
                if loop.every(options.ckpt_every) and not loop.ending:
                    loop.check()
                    self.save_checkpoint()
                if loop.ending:
                    break
        loop.check()
        path = self.save_checkpoint()
        if not loop.done:
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

    def log_metrics(self, loop: Loop) -> None:
        """Mean loss terms since the last line, over ranks, to metrics.jsonl (a non-finite one stops the run)."""
        terms = loop.means()
        self.skipped = self.dist.merge(self.skipped)
        skipped = runtime.skipped_counts(self.skipped, self.images.scan_skipped)
        self.log.write({"step": self.step, "lr": self.scheduler.get_last_lr()[0], **terms,
                        "img_s": loop.rate * self.recipe.batch_size, "skipped_files": sum(skipped.values()),
                        "wall_s": self.wall_before + time.perf_counter() - self.t_start})
        self.last_losses = terms

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

"""One run of ``python -m train.controlnet`` (:mod:`train.controlnet` parses the command line).

Reads top to bottom: :class:`Training` builds the run (the autoencoder, the frozen SD1.5 base and
the ControlNet; the data; the :class:`~train.controlnet.Recipe`; the step, :class:`train.cn_step.Trainer`;
a resumed state; the batches), :meth:`Training.train` is the loop (batch -> loss -> step -> log /
eval / sheet / checkpoint at their intervals, :class:`train.loop.Loop`), then the files it writes.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scg_models.dtypes import DTYPES

from . import runtime
from .cn_step import SubsetTrainer, Trainer, lr_at
from .controlnet import TRAINER, Options, Recipe, autoencoder_sha256, file_identity, subset_policy
from .loop import Loop
from .runtime import Dist, TrainError

log = logging.getLogger("scg.train")


class Training:
    """One run: models, data, the step and (resumed) state built in ``__init__``, trained by :meth:`train`."""

    def __init__(self, options: Options, dist: Dist):
        o = options
        self.options, self.dist, self.t_start = o, dist, time.time()
        self.out, self.work_dir = o.out, o.work_dir or runtime.default_work_dir(o.out)
        self.precision = o.precision
        if self.precision == "auto":
            self.precision = "bf16" if dist.cuda and torch.cuda.is_bf16_supported() else "fp32"
        if dist.cuda:  # fixed shapes: cuDNN picks its fastest kernels, unless bitwise repeatability is asked for
            torch.backends.cudnn.benchmark = not o.deterministic
            if o.deterministic:
                torch.backends.cudnn.deterministic = True
                torch.use_deterministic_algorithms(True, warn_only=True)
        self.build_models()
        self.build_data()
        self.steps = o.steps or math.ceil(5 * len(self.usable) / (o.batch_size * o.grad_accum * dist.world_size))
        self.recipe = Recipe(
            base=file_identity(o.base), autoencoder=autoencoder_sha256(self.ae), modules=self.modules,
            resolution=o.resolution, batch_size=o.batch_size, grad_accum=o.grad_accum, world=dist.world_size,
            seed=o.seed, lr=o.lr, warmup=o.warmup, weight_decay=o.weight_decay, max_grad_norm=o.clip_grad,
            precision=self.precision, caption_dropout=o.caption_dropout, data=self.index.fingerprint(),
            samples=o.samples, precompute=bool(o.precompute), init=self.init_from,
            subsets=self.policy.to_dict() if self.policy else None)
        trainer_class = Trainer if self.policy is None else functools.partial(SubsetTrainer, policy=self.policy)
        self.trainer = trainer_class(self.base, self.ae, self.modules, self.controlnet, device=dist.device,
                                     precision=self.precision, checkpointing=o.gradient_checkpointing, lr=o.lr,
                                     weight_decay=o.weight_decay, seed=o.seed, caption_dropout=o.caption_dropout,
                                     max_grad_norm=o.clip_grad, dist=dist, compile=o.compile)
        # resume: the newest checkpoint (auto) or the one named; its recipe must be this run's
        self.step, self.final_losses = 0, {}
        path = runtime.find_resume(o.resume, self.work_dir)
        if path is not None:
            self.resume_from(path)
        self.loop = Loop(dist, self.step, self.steps, o.stop_after, progress=o.progress)
        self.build_batches()
        # files (rank 0): leftovers of killed writes go, the log continues at this step
        self.log = runtime.open_work_dir(self.out, self.work_dir, self.step, dist)

    def build_models(self) -> None:
        """The autoencoder and its modules, the frozen base (refused unless SD1.5, before any model is
        built; bf16 keeps the frozen UNet's weights in bf16), the ControlNet: the UNet's encoder or
        ``--init-controlnet``."""
        from scg_models import formats, load_autoencoder

        from . import sd15

        o = self.options
        self.ae = load_autoencoder(o.autoencoder)
        self.modules = self.ae.resolve_modules(o.modules)
        self.hint_hw = self.ae.output_size(o.resolution, o.resolution)
        unet_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.base = sd15.load_base(o.base, unet_dtype=unet_dtype)
        if o.resolution % self.base.latent_factor:
            raise TrainError(f"--resolution {o.resolution}: must be a multiple of {self.base.latent_factor} "
                             "for this UNet")
        self.policy = subset_policy(o)
        self.controlnet = sd15.build_controlnet(self.base, seed=o.seed, hint_channels=hint_channels(self.policy,
                                                                                                      self.ae))
        self.init_from = None
        if o.init_controlnet:
            start = subset_init(formats.load_controlnet_file(o.init_controlnet).state_dict, self.controlnet)
            own = self.controlnet.state_dict()
            bad = sorted(set(own) ^ set(start)) + [k for k in own if k in start and own[k].shape != start[k].shape]
            if bad:
                raise TrainError(f"--init-controlnet: {o.init_controlnet} does not fit this base's ControlNet "
                                 f"(first mismatching key: {bad[0]})")
            self.controlnet.load_state_dict({k: v.float() for k, v in start.items()})
            self.init_from = file_identity(o.init_controlnet)
        latent_hw = o.resolution // 8
        block_hw = sd15.hint_block_size(self.hint_hw, self.controlnet)
        if block_hw != (latent_hw, latent_hw):
            raise TrainError(f"the autoencoder's hint at {o.resolution}px is {self.hint_hw[0]}x{self.hint_hw[1]}; "
                             f"the ControlNet's hint block turns that into {block_hw}, not the latent size "
                             f"{latent_hw}x{latent_hw}; pick another --resolution")

    def build_data(self) -> None:
        """Rank 0 scans ``--data`` (every rank trains on its view); the latent/text cache
        (``--precompute``); the images held out for the sheets and the ones trained on."""
        from .cn_data import precompute, scan

        o, dist = self.options, self.dist
        self.index = dist.broadcast(scan(o.data, o.captions, check=True) if dist.is_main else None)
        self.workers = o.workers if o.workers is not None else min(8, max(1, (os.cpu_count() or 2) // dist.world_size))
        self.skipped = dict(self.index.skipped)  # relative path -> reason
        self.cache = None
        if o.precompute:
            folder = o.cache_dir or str(Path(o.out).resolve().parent / ".scg-cache" / Path(o.out).stem)
            key = {"base": file_identity(o.base), "data": self.index.fingerprint(), "resolution": o.resolution,
                   "version": 1}
            self.cache, failed = precompute(self.base, self.index, o.resolution, folder, key, dist, o.batch_size,
                                            self.workers)
            self.skipped.update(failed)
        readable = [i for i, p in enumerate(self.index.paths) if p not in self.skipped]
        self.held = [readable[k] for k in holdout(len(readable), o.samples)]
        self.usable = [i for i in readable if i not in set(self.held)]

    def build_batches(self) -> None:
        """The micro-batches of the steps still to go, the fixed evaluation batch, the held-out sample batch."""
        from .cn_data import TrainSet, collate, step_batches

        o, dist = self.options, self.dist
        order = runtime.EpochOrder(len(self.usable), o.seed)
        train_set = TrainSet(self.index, self.usable, o.resolution, self.cache)
        self.loader = torch.utils.data.DataLoader(
            train_set, batch_sampler=step_batches(order, o.batch_size, dist.world_size, dist.rank,
                                                  self.step * o.grad_accum, self.loop.stop_at * o.grad_accum),
            num_workers=self.workers, collate_fn=collate, pin_memory=dist.cuda,
            prefetch_factor=4 if self.workers > 0 else None)
        self.eval_batch = (collate([train_set[(0, i)] for i in range(min(o.eval_images, len(self.usable)))])
                           if o.eval_images > 0 else None)
        held_set = TrainSet(self.index, self.held, o.resolution, None)
        self.sample_batch = collate([held_set[(0, i)] for i in range(len(self.held))]) if self.held else None

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
    def train(self) -> int:
        """Train from ``self.step`` to the loop's end; 0 when the run finished, 130 when it stopped early."""
        o, loop = self.options, self.loop
        self.announce()
        first_eval = self.evaluate() if self.step == 0 else None
        eval_every = o.eval_every or o.ckpt_every
        with loop:
            for micro_batches in steps_of(self.loader, o.grad_accum):
                self.note_skipped(micro_batches)
                lr = lr_at(self.step, o.lr, o.warmup)
                loss = self.trainer.step(micro_batches, lr)
                self.step += 1
                loop.record(self.step, {"loss": loss})
                if loop.every(o.log_every) or loop.ending:
                    self.log_metrics(loop, lr)
                if loop.every(eval_every) and not loop.ending:
                    self.evaluate()
                if loop.every(o.sheet_every) and not loop.ending:
                    loop.check()
                    self.write_samples()
                if loop.every(o.ckpt_every) and not loop.ending:
                    loop.check()
                    self.save()
                if loop.ending:
                    break
        loop.check()
        self.save()
        last_eval = self.evaluate()
        sheet = self.write_samples() if o.sheet_every > 0 else None
        return self.finish(loop.done, first_eval, last_eval, sheet)

    def finish(self, done: bool, first_eval, last_eval, sheet) -> int:
        """The ``end`` event (the run's summary) and the last line (rank 0); the exit status."""
        summary = {"step": self.step, "steps": self.steps, "done": done, "out": self.out, "work_dir": self.work_dir,
                   "skipped": len(self.skipped) + sum(self.index.scan_skipped.values()), "images": len(self.usable),
                   "first_eval_loss": first_eval, "last_eval_loss": last_eval, "sheet": sheet,
                   "final_losses": self.final_losses, "seconds": time.time() - self.t_start}
        if self.dist.is_main:
            self.log.write({"event": "end", **summary})
            counts = runtime.skipped_counts(self.skipped, self.index.scan_skipped)
            print(f"{'finished' if done else 'stopped'} at step {self.step}/{self.steps}: wrote {self.out} and a "
                  f"checkpoint in {os.path.join(self.work_dir, 'ckpts')}"
                  + (f"; skipped {runtime.describe_skipped(counts)} image files" if sum(counts.values()) else ""),
                  file=sys.stderr)
        return 0 if done else 130

    def announce(self) -> None:
        """The recipe and the plan, once at the start (rank 0)."""
        if not self.dist.is_main:
            return
        o, recipe = self.options, self.recipe
        counts = runtime.skipped_counts(self.skipped, self.index.scan_skipped)
        print("recipe: " + json.dumps(asdict(recipe)), file=sys.stderr)
        print(f"SCG ControlNet: {len(self.usable)} training images ({self.index.captioned} captioned from "
              f"{self.index.caption_source}; {o.samples} held out for samples; {runtime.describe_skipped(counts)} "
              f"skipped), modules {o.modules} = {self.modules}, hint {self.hint_hw[0]}x{self.hint_hw[1]} at "
              f"{o.resolution}px, {recipe.precision}, checkpointing {'on' if o.gradient_checkpointing else 'off'}, "
              f"{'cached latents' if o.precompute else 'latents encoded per step'}, {self.dist.world_size} process(es) x "
              f"batch {o.batch_size} x accum {o.grad_accum}, steps {self.step}->{self.loop.stop_at} of {self.steps}",
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

    def log_metrics(self, loop: Loop, lr: float) -> None:
        """The mean loss since the last line, over processes, to metrics.jsonl (a non-finite one stops the run)."""
        entry = {"step": self.step, **loop.means(), "lr": lr, "it_s": loop.rate}
        if self.dist.cuda:
            entry["max_mem_gb"] = torch.cuda.max_memory_allocated(self.dist.device) / 2**30
        self.log.write(entry)
        self.final_losses = {"loss": entry["loss"]}

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
            write_sheet(self.trainer, self.sample_batch, path, self.options)
        self.dist.barrier()
        return path

    def save(self) -> None:
        """The output ControlNet (``--save-dtype``) and a checkpoint to continue exactly (rank 0 writes)."""
        from scg_models import formats

        rngs = self.dist.gather(runtime.rng_state(self.dist.device))
        self.skipped = self.dist.merge(self.skipped)
        if self.dist.is_main:
            o = self.options
            info = {"trainer": "scg train.controlnet", "modules": self.modules, "selection": o.modules,
                    "autoencoder": {"file": os.path.basename(o.autoencoder), "sha256": self.recipe.autoencoder},
                    "hint": {"resolution": o.resolution, "size": list(self.hint_hw),
                             "how": "ae.hint(image centre-cropped and resized to the generation size), raw, "
                                    "fed to the hint block without resizing"},
                    "base": os.path.basename(o.base), "steps": self.step, "images": len(self.usable),
                    "init": os.path.basename(o.init_controlnet) if o.init_controlnet else "unet-encoder",
                    "batch_size": o.batch_size, "grad_accum": o.grad_accum, "world_size": self.dist.world_size,
                    "lr": o.lr, "precision": self.recipe.precision, "caption_dropout": o.caption_dropout,
                    "captions": self.index.caption_source, "final_losses": self.final_losses,
                    "skipped": runtime.skipped_counts(self.skipped, self.index.scan_skipped)}
            weights = formats.ControlNetFile(dict(self.controlnet.state_dict()), self.ae, {})
            save = formats.save_controlnet if self.policy is None else save_any_subset
            save(weights, self.out, dtype=DTYPES[o.save_dtype], info=info)
            state = {"recipe": asdict(self.recipe), "controlnet": self.controlnet.state_dict(),
                     "optimizer": self.trainer.optimizer.state_dict(), "rng": rngs, "skipped": dict(self.skipped),
                     "final_losses": self.final_losses}
            runtime.save_checkpoint(state, self.work_dir, self.step, TRAINER, o.keep)
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


# --- helpers --------------------------------------------------------------------------------
def steps_of(loader, n: int):
    """The loader's micro-batches in lists of ``n``: one list per optimiser step."""
    batches = iter(loader)
    while group := list(itertools.islice(batches, n)):
        yield group


def holdout(n: int, k: int) -> list[int]:
    """``k`` evenly spread indices of ``n`` images, held out for the sample sheets."""
    if k <= 0:
        return []
    if k >= n:
        raise TrainError(f"--samples {k}: needs more than {k} images (found {n}); lower --samples or use 0")
    return sorted({(i * n) // k for i in range(k)})


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

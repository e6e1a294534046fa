"""What both trainers share: processes, files, data order, the metrics log, checkpoints and resuming
(the loop itself, stopping and the progress bar: :mod:`train.loop`).

* :class:`Dist` - this process of a ``torchrun`` job (or the only one): NCCL on GPUs, gloo on
  the CPU; only rank 0 writes files.
* :func:`atomic_write` - every file a trainer writes appears whole or not at all: written under a
  temporary name that never ends in a model extension (``.NAME.PID.partial``), fsynced, renamed.
  :func:`remove_partials` deletes those of killed runs.
* :class:`EpochOrder`, :class:`StepSampler` - which sample a position holds is a pure function
  of (seed, position), so a resumed or multi-process run sees exactly the same batches.
* :class:`MetricsLog` - ``metrics.jsonl`` in the work dir: one JSON object a line, each with
  ``step``; reopening at step s drops lines past s (no step twice after a resume).
* :func:`checkpoints`, :func:`find_resume`, :func:`load_checkpoint` - ``--resume auto|PATH``:
  ``auto`` takes the newest checkpoint in the work dir (or says that it starts fresh).
* :class:`TrainError` - what a trainer's command line reports in one line, exit status 2.

Launch on N GPUs of one machine: ``torchrun --standalone --nproc_per_node N -m train.autoencoder ...``
(several machines: ``--nnodes``/``--rdzv_endpoint`` as torchrun documents).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from scg_models.errors import CheckpointError, SCGError
from scg_models.files import MODEL_EXTENSIONS, atomic_write, remove_partials  # noqa: F401  (re-exported)
from scg_models.safe_pickle import safe_load

CHECKPOINT_FORMAT = "scg_train_checkpoint"


class TrainError(SCGError):
    """A run that cannot start or go on: a bad flag, file, data folder or a non-finite loss."""


# --- processes ---------------------------------------------------------------------------
def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; one GPU per local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                             "use --device cpu")
        device = torch.device(name if ":" in name else f"cuda:{local_rank}")
        torch.cuda.set_device(device)
        return device
    if name != "cpu":
        raise TrainError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


@dataclass
class Dist:
    """This process of a torchrun job: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def start(cls, device: str = "auto", timeout_s: float = 1800) -> Dist:
        """Join the process group torchrun describes (none without ``WORLD_SIZE``); pick the device."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        dev = pick_device(device, local)
        if world > 1 and not dist.is_initialized():
            kw = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                                    **kw)
        return cls(rank, world, local, dev)

    @property
    def is_main(self) -> bool:
        """Only this process writes files (checkpoints, metrics, sheets, the model)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def wrap(self, module: torch.nn.Module, **kw) -> torch.nn.Module:
        """DDP around ``module`` when there is more than one process."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device.index] if self.cuda else None, **kw)

    def any(self, flag: bool) -> bool:
        """True on every rank if true on any (all ranks stop on the same step)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def average(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (float64, on this process's device) averaged over processes, on the CPU."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t = t / self.world_size
        return t.cpu()

    def gather(self, obj) -> list:
        """Every rank's (small, picklable) ``obj``, in rank order."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def merge(self, mapping: dict) -> dict:
        """The union of every rank's dict (rank 0's value wins a shared key)."""
        out: dict = {}
        for part in reversed(self.gather(dict(mapping))):
            out.update(part)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


# --- files -------------------------------------------------------------------------------
def save_torch(obj, path) -> str:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


# --- data order -----------------------------------------------------------------------------
class EpochOrder:
    """Which of ``n`` items sample position ``p`` holds: an endless stream of per-epoch
    permutations, a pure function of (seed, p)."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise TrainError("no training images left (all skipped or held out)")
        self.n, self.seed = int(n), int(seed)
        self._perms: dict[int, np.ndarray] = {}

    def item(self, position: int) -> int:
        epoch, i = divmod(int(position), self.n)
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, 1, epoch]).permutation(self.n)
        return int(self._perms[epoch][i])


class StepSampler(torch.utils.data.Sampler):
    """``item(k)`` for k = ``start .. stop-1`` in order (default: k itself): a DataLoader's
    ``sampler`` for a dataset indexed by step, or its ``batch_sampler`` when items are lists."""

    def __init__(self, start: int, stop: int, item: Callable[[int], object] | None = None):
        self.start, self.stop, self.item = int(start), int(stop), item

    def __iter__(self):
        for k in range(self.start, self.stop):
            yield k if self.item is None else self.item(k)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


# --- the metrics log -------------------------------------------------------------------------
class MetricsLog:
    """``metrics.jsonl``: one JSON object a line, each with ``step`` (training lines also ``loss``;
    others an ``event``). Opening at step s keeps the lines up to s and drops the rest, so a
    resumed run never repeats a step; a fresh run (s = 0) starts an empty file. Rank 0 only."""

    def __init__(self, path, step: int, enabled: bool = True):
        self.path, self.enabled = os.fspath(path), enabled
        if not enabled:
            return
        keep = []
        if step > 0 and os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        if int(json.loads(line).get("step", 0)) <= step:
                            keep.append(line if line.endswith("\n") else line + "\n")
                    except (ValueError, TypeError, AttributeError):
                        pass  # a line cut off by a kill
        atomic_write(self.path, lambda tmp: _write_lines(tmp, keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        with open(self.path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]


def open_work_dir(out: str, work_dir: str, step: int, dist: Dist) -> MetricsLog:
    """Rank 0 makes the output folder and ``work_dir/{ckpts,sheets}``, deletes the temporary files
    of killed writes there, and opens ``metrics.jsonl`` at ``step``. Returns the log (silent off rank 0)."""
    if dist.is_main:
        for folder in (os.path.dirname(os.path.abspath(out)), work_dir, os.path.join(work_dir, "ckpts"),
                       os.path.join(work_dir, "sheets")):
            os.makedirs(folder, exist_ok=True)
            remove_partials(folder)
    return MetricsLog(os.path.join(work_dir, "metrics.jsonl"), step, enabled=dist.is_main)


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(lines)


# --- checkpoints and --resume -------------------------------------------------------------
def checkpoints(work_dir) -> list[str]:
    """The checkpoints in ``work_dir/ckpts`` (``step_NNNNNNNN.pt``), oldest first."""
    return sorted(glob.glob(os.path.join(os.fspath(work_dir), "ckpts", "step_*.pt")))


def checkpoint_path(work_dir, step: int) -> str:
    return os.path.join(os.fspath(work_dir), "ckpts", f"step_{step:08d}.pt")


def save_checkpoint(state: dict, work_dir, step: int, trainer: str, keep: int) -> str:
    """Write ``state`` (with the format tag and ``trainer``) atomically; keep the newest ``keep``."""
    path = save_torch({"format": CHECKPOINT_FORMAT, "trainer": trainer, "step": int(step), **state},
                      checkpoint_path(work_dir, step))
    for old in checkpoints(work_dir)[:-max(1, keep)]:
        os.unlink(old)
    return path


def find_resume(resume: str | None, work_dir: str) -> str | None:
    """The checkpoint ``--resume`` names: ``auto`` is the newest one in the work dir (None, said on
    stderr, when there is none: the run starts fresh); otherwise a path that must exist."""
    if resume is None:
        return None
    if resume == "auto":
        found = checkpoints(work_dir)
        if not found:
            print(f"--resume auto: no checkpoint in {os.path.join(work_dir, 'ckpts')}; starting fresh at step 0",
                  file=sys.stderr)
            return None
        return found[-1]
    if not os.path.isfile(resume):
        raise TrainError(f"--resume {resume}: no such checkpoint file (or use --resume auto)")
    return resume


def load_checkpoint(path: str, trainer: str) -> dict:
    """A checkpoint written by :func:`save_checkpoint` for ``trainer``, read with the bounded,
    data-only reader every checkpoint goes through (:func:`scg_models.safe_pickle.safe_load`)."""
    try:
        state = safe_load(path)
    except CheckpointError as e:  # not a torch file, or one asking for more than plain data
        raise TrainError(f"--resume {path}: not a train.{trainer} checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"--resume {path}: not a train.{trainer} checkpoint")
    if state.get("trainer") != trainer:
        raise TrainError(f"--resume {path}: a train.{state.get('trainer')} checkpoint, not train.{trainer}")
    return state


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


def typed_fields(cls, values: dict, source: str) -> dict:
    """``values`` checked against the annotations of dataclass ``cls`` (``int``, ``float``,
    ``str | None``, ...): a stored recipe or option of the wrong type is a :class:`TrainError`."""
    for f in dataclasses.fields(cls):
        if f.name not in values or not isinstance(f.type, str) or any(
                t.strip() not in _TYPES for t in f.type.split("|")):
            continue
        allowed = tuple(t for name in f.type.split("|") for t in _TYPES[name.strip()])
        value = values[f.name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise TrainError(f"{source}: {f.name} is {value!r}, expected {f.type}")
    return values


def load_weights(what: str, load: Callable[[], object], path: str) -> None:
    """Run ``load()`` (``load_state_dict`` calls); a checkpoint whose tensors do not fit is a TrainError."""
    try:
        load()
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainError(f"--resume {path}: its {what} does not fit this run ({first[:200]})") from None


def rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def default_work_dir(out: str) -> str:
    """``NAME.train/`` next to ``NAME.safetensors``."""
    out = os.fspath(out)
    return (out[:-len(".safetensors")] if out.endswith(".safetensors") else out) + ".train"


def run_cli(main: Callable[[], int]) -> int:
    """Run a trainer's ``main`` as a command: warnings of the ``scg`` loggers on stderr (everything
    with ``$SCG_VERBOSE``); a project error is one line on stderr, exit 2."""
    logging.basicConfig(level=logging.INFO if os.environ.get("SCG_VERBOSE") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return main()
    except SCGError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def skipped_counts(files: dict[str, str], scan_counts: dict[str, int] | None = None) -> dict[str, int]:
    """Skipped inputs by reason: files found unusable (name -> reason) plus the folder scan's counts."""
    counts: dict[str, int] = dict(scan_counts or {})
    for reason in files.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def describe_skipped(counts: dict[str, int]) -> str:
    """``"3 (2 undecodable, 1 not a regular file)"``."""
    total = sum(counts.values())
    return f"{total}" + (" (" + ", ".join(f"{n} {r}" for r, n in sorted(counts.items())) + ")" if total else "")

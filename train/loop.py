"""The loop both trainers share: the running flags, stopping, the progress bar, and the steps.

A trainer's loop reads (``train.autoencoder``, ``train.controlnet``)::

    loop = Loop(dist, start=step, steps=steps, stop_after=options.stop_after, progress=options.progress)
    with loop:                                      # SIGINT/SIGTERM: finish this step, then stop
        for batch in batches:
            terms = train_step(batch)               # batch -> loss -> optimiser step
            step += 1
            loop.record(step, terms)                # the bar; is this the last step?
            if loop.every(options.log_every) or loop.ending:
                log(loop.means())                   # a non-finite loss stops the run here
            if loop.every(options.ckpt_every) and not loop.ending:
                loop.check()
                save()
            if loop.ending:
                break
    loop.check()
    save()                                          # the final checkpoint
    return 0 if loop.done else 130                  # 130: stopped early, with a checkpoint

* :class:`RunOptions`, :func:`add_run_arguments` - the flags both trainers take, spelled the same
  (``--device``, ``--ckpt-every``, ``--sheet-every``, ...); :class:`Renamed` keeps an old spelling
  working with a one-line notice; :func:`help_with_defaults` shows a dataclass's defaults in ``--help``.
* :class:`StopSignal` - SIGINT/SIGTERM end the run at the next step boundary with a checkpoint.
* :func:`progress` - a tqdm bar when tqdm is installed and wanted, else a silent stand-in.
* :class:`Loop` - where the run is, when it ends, and the loss terms since the last log line,
  averaged over processes and checked for non-finite values (:func:`check_finite`).
"""
from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from .runtime import Dist, TrainError


# --- the flags both trainers take -----------------------------------------------------------
@dataclass
class RunOptions:
    """How this process runs a training (both trainers); may change between a run and its resumption."""

    out: str | None = None
    work_dir: str | None = None
    resume: str | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    deterministic: bool = False
    threads: int = 0
    workers: int | None = None  # None: the trainer's choice
    log_every: int = 10
    ckpt_every: int = 1000
    sheet_every: int = 1000
    keep: int = 3
    progress: bool = True
    stop_after: int | None = None  # None: run to the last step

    def check(self) -> None:
        """Refuse options that cannot run (a :class:`TrainError` naming the flag)."""
        for k, least in (("log_every", 1), ("ckpt_every", 1), ("keep", 1), ("sheet_every", 0), ("threads", 0),
                         ("stop_after", 0)):
            value = getattr(self, k)
            if not (value is None and k == "stop_after") and (not isinstance(value, int) or value < least):
                raise TrainError(f"--{k.replace('_', '-')} must be an integer >= {least}; got {value}")


class Renamed(argparse.Action):
    """An old spelling of a flag: it still works, as ``new`` does, and says so in one line on stderr."""

    def __init__(self, option_strings, dest, new: str, nargs=None, const=None, **kwargs):
        kwargs["help"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        if os.environ.get("RANK", "0") == "0":  # once per command, not once per torchrun process
            print(f"note: {option_string} is deprecated; use {self.new} (same meaning)", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_run_arguments(p: argparse.ArgumentParser, sheets: str, workers: str) -> None:
    """The running flags (:class:`RunOptions` but ``--out``) and their old spellings; ``sheets``,
    ``workers``: the help of ``--sheet-every`` and ``--workers`` (what they mean differs a little)."""
    g = p.add_argument_group("files, checkpoints, progress")
    g.add_argument("--work-dir", help="checkpoints (ckpts/), metrics.jsonl and PNG sheets (sheets/); "
                   "default: NAME.train/ next to --out")
    g.add_argument("--resume", nargs="?", const="auto", metavar="auto|PATH",
                   help="continue exactly from the newest checkpoint in --work-dir (auto, also plain --resume; a fresh "
                        "start, said so, when there is none) or from this checkpoint file")
    g.add_argument("--ckpt-every", type=int, help="steps between checkpoints")
    g.add_argument("--save-every", dest="ckpt_every", type=int, action=Renamed, new="--ckpt-every")
    g.add_argument("--keep", type=int, help="checkpoints kept")
    g.add_argument("--log-every", type=int, help="steps between metrics.jsonl lines")
    g.add_argument("--sheet-every", type=int, help=sheets)
    g.add_argument("--sample-every", dest="sheet_every", type=int, action=Renamed, new="--sheet-every")
    g.add_argument("--stop-after", type=int, help="stop (with a checkpoint, exit status 130) after this many steps "
                   "of this run")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g = p.add_argument_group("device and speed")
    g.add_argument("--device", help="auto (CUDA when present), cpu, cuda or cuda:N; under torchrun one GPU a process")
    g.add_argument("--cpu", dest="device", nargs=0, const="cpu", action=Renamed, new="--device cpu")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA, fp32 on the CPU; bf16 also runs on the CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the forward passes (the CPU needs a C "
                   "compiler; the first steps are slow while it compiles)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic CUDA kernels (slower), so a resumed run repeats bit for bit as on the CPU")
    g.add_argument("--threads", type=int, help="CPU threads; 0: torch's choice")
    g.add_argument("--workers", type=int, help=workers)


def help_with_defaults(*defaults) -> functools.partial:
    """A ``formatter_class`` that ends each flag's help with its default, read from the
    dataclass instances ``defaults`` (the one place defaults live)."""
    values = {k: v for d in defaults for k, v in vars(d).items()}
    return functools.partial(_DefaultsHelp, defaults=values)


class _DefaultsHelp(argparse.HelpFormatter):
    def __init__(self, prog, defaults: dict, **kwargs):
        super().__init__(prog, **kwargs)
        self.defaults = defaults

    def _get_help_string(self, action):
        text = action.help or ""
        value = self.defaults.get(action.dest)
        if value in (None, "") or isinstance(value, bool) or action.required or "default" in text:
            return text
        return f"{text} (default {value})" if "%" not in str(value) else text


# --- stopping -------------------------------------------------------------------------------
class StopSignal:
    """``with StopSignal() as stop:`` SIGINT/SIGTERM set ``stop.requested`` (the loop finishes its
    step and writes a checkpoint); a second Ctrl-C raises KeyboardInterrupt (no checkpoint)."""

    def __init__(self, announce: bool = True):
        self.requested, self.announce, self._old = False, announce, {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                  "(Ctrl-C again to abort without one)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}


# --- progress -------------------------------------------------------------------------------
class _NoBar:
    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable=None, *, total: int | None = None, initial: int = 0, desc: str = "train",
             enabled: bool = True, unit: str = "step"):
    """A tqdm bar (when installed and ``enabled``) or a silent stand-in with the same methods."""
    if not enabled:
        return _NoBar(iterable)
    try:
        from tqdm import tqdm
    except ImportError:  # optional (requirements-train.txt); the metrics log is always written
        return _NoBar(iterable)
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                mininterval=1.0 if sys.stderr.isatty() else 30.0)


def check_finite(values: dict[str, float], step: int) -> None:
    """A non-finite loss ends the run (exit 2); the newest checkpoint stays the last good one."""
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
        raise TrainError(f"step {step}: the loss is not finite ({', '.join(f'{k} {v}' for k, v in bad.items())}); "
                         "nothing written for this step, the newest checkpoint is the last good one "
                         "(check the inputs, or try a lower --lr or --clip-grad 1)")


# --- the steps ------------------------------------------------------------------------------
class Loop:
    """Steps ``start+1 .. stop_at`` of a run of ``steps`` (``stop_at``: ``steps``, or ``start +
    stop_after``), the stop request, the progress bar, and the loss terms since :meth:`means`.

    Every process calls the same methods at the same steps (they exchange values)."""

    def __init__(self, dist: Dist, start: int, steps: int, stop_after: int | None = None, progress: bool = True):
        self.dist, self.step, self.steps = dist, int(start), int(steps)
        self.stop_at = self.steps if stop_after is None else min(self.steps, self.step + max(0, int(stop_after)))
        self.ending = self.step >= self.stop_at
        self.window: list[tuple[int, dict]] = []  # (step, loss terms: tensors or floats), not yet logged
        self.rate = 0.0  # steps per second over the last window
        self.show = progress and dist.is_main

    def __enter__(self) -> Loop:
        self.signal = StopSignal(announce=self.dist.is_main).__enter__()
        self.bar = progress(total=self.steps, initial=self.step, enabled=self.show)
        self.t_window = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        self.signal.__exit__(*exc)

    @property
    def done(self) -> bool:
        """Every step of the run is done (else it stopped early)."""
        return self.step >= self.steps

    def record(self, step: int, terms: dict) -> None:
        """Step ``step`` is done with these loss terms; decides :attr:`ending` (on every process alike)."""
        self.step = step
        self.window.append((step, terms))
        self.bar.update(1)
        self.ending = step >= self.stop_at or self.dist.any(self.signal.requested)

    def every(self, n: int | None) -> bool:
        """The step is a multiple of ``n`` (never for ``n`` 0 or None)."""
        return bool(n) and n > 0 and self.step % n == 0

    def means(self) -> dict[str, float]:
        """Each term's mean over the steps since the last call and over processes (shown on the bar);
        a non-finite value is a :class:`TrainError` naming the first step that had one."""
        terms = self._reduce()
        now = time.perf_counter()
        self.rate = len(self.window) / max(now - self.t_window, 1e-9)
        self.window, self.t_window = [], now
        self.bar.set_postfix(**{k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
        return terms

    def check(self) -> None:
        """Raise as :meth:`means` does, keeping the window (before a file is written)."""
        self._reduce()

    def _reduce(self) -> dict[str, float]:
        if not self.window:
            return {}
        keys, device = sorted(self.window[0][1]), self.dist.device
        table = torch.stack([torch.stack([torch.as_tensor(terms[k]).detach().reshape(()).to(device, torch.float64)
                                          for k in keys]) for _, terms in self.window])
        table = self.dist.average(table)  # steps x terms: one exchange, one read back
        for (step, _), row in zip(self.window, table):
            check_finite(dict(zip(keys, row.tolist())), step)
        return dict(zip(keys, table.mean(0).tolist()))

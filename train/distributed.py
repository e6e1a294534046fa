"""torchrun / DDP helpers: one process per device, NCCL on GPUs, gloo on the CPU; rank 0 writes.

Launch on N GPUs of one machine::

    torchrun --standalone --nproc_per_node N -m train.autoencoder --device cuda ...

(several machines: ``--nnodes``/``--rdzv_endpoint`` as torchrun documents). Without torchrun
(no ``WORLD_SIZE`` in the environment) everything runs in one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only this process writes files (checkpoints, metrics, sheets, the model)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; a GPU per local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                             "use --device cpu")
        dev = torch.device(name if ":" in name else f"cuda:{local_rank}")
        torch.cuda.set_device(dev)
        return dev
    if name != "cpu":
        raise SystemExit(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def init(device: str = "auto", timeout_s: float = 1800) -> Dist:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kw)
    return Dist(rank, world, local, dev)


def wrap(module: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DDP around ``module`` when there is more than one process (every parameter gets a gradient)."""
    if not d.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [d.device.index] if d.device.type == "cuda" else None
    return DDP(module, device_ids=ids, broadcast_buffers=False)


def any_flag(flag: bool, d: Dist) -> bool:
    """True on every rank if it is true on any (used to stop all ranks on the same step)."""
    if not d.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_dict(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys everywhere)."""
    if not d.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / d.world_size for k, v in zip(keys, t.tolist())}


def union_sets(items: set, d: Dist) -> set:
    """Union of small picklable sets over ranks."""
    if not d.enabled:
        return set(items)
    out: list = [None] * d.world_size
    dist.all_gather_object(out, sorted(items))
    return set().union(*map(set, out))


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()

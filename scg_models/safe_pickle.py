"""Loading pickled checkpoints without running code from them.

``torch.load(weights_only=True)`` admits tensors and plain containers only. On top of
it we admit ``argparse.Namespace`` (the authors' ``ckpt['arg']``) and, for the
bookkeeping a PyTorch Lightning checkpoint carries (callbacks, loops, hyper-parameters),
inert stand-ins for classes of a few data-only libraries: they record their arguments
and never call the real class. Any other global (``os.system``, ``builtins.eval``,
``subprocess.*``...) is refused with :class:`UnsafeCheckpointError` before it can run.
"""
from __future__ import annotations

import argparse
import pickle
import re

import torch

from .errors import CheckpointError, UnsafeCheckpointError

#: top-level packages whose classes may appear in a Lightning checkpoint as plain data
TOLERATED_PACKAGES = ("pytorch_lightning", "lightning", "lightning_fabric", "omegaconf", "numpy",
                      "pathlib", "typing", "enum")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_MAX_STUBS = 200


class InertObject:
    """Stand-in for a tolerated class from a checkpoint: keeps what it was given, does nothing."""

    _qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<inert {self._qualname}>"


def _stub(qualname: str):
    return type("Inert_" + qualname.replace(".", "_"), (InertObject,), {"_qualname": qualname})


def safe_torch_load(path: str):
    """``torch.load`` a pickled checkpoint on the CPU without executing anything from it."""
    allowed: list = [argparse.Namespace]
    for _ in range(_MAX_STUBS):
        try:
            # a file object, not a name: torch.load must not pick a loader from the file's extension
            with torch.serialization.safe_globals(allowed), open(path, "rb") as fh:
                return torch.load(fh, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            m = _GLOBAL.search(str(e))
            if not m:
                if "Weights only load failed" in str(e):  # the safe unpickler refused an instruction
                    raise UnsafeCheckpointError(f"{path}: refused to load: the pickle uses instructions that "
                                                f"only code-running files need ({_last_line(e)})") from None
                raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
            name = m.group(1)
            if name.split(".")[0] not in TOLERATED_PACKAGES:
                raise UnsafeCheckpointError(
                    f"{path}: refused to load: the file asks to call {name!r} while loading, which could "
                    "run code. Only weights are read from checkpoints; re-save it as .safetensors from a "
                    "trusted environment.") from None
            allowed.append((_stub(name), name))
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint ({_first_line(e)})") from None
    raise UnsafeCheckpointError(f"{path}: refused: more than {_MAX_STUBS} unknown classes in the pickle")


def _last_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip() and "documentation" not in ln]
    return (lines[-1] if lines else type(e).__name__)[:200]


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]

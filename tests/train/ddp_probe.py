"""Entry point for the 2-process test: train.autoencoder with every file write recorded per rank.

Run by torchrun from test_distributed.py; ``SCG_PROBE_DIR`` receives ``rank<N>.txt``.
"""
import builtins
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import scg_models  # noqa: E402
import train.autoencoder as T  # noqa: E402
import train.viz as V  # noqa: E402

_log = open(os.path.join(os.environ["SCG_PROBE_DIR"], f"rank{os.environ.get('RANK', '0')}.txt"), "a")


def _record(what):
    _log.write(what + "\n")
    _log.flush()


def _wrap(fn, what):
    def inner(*a, **k):
        _record(f"{what} {a[1] if len(a) > 1 else ''}")
        return fn(*a, **k)
    return inner


def _open(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+"):
        _record(f"open {file} {mode}")
    return builtins.open(file, mode, *a, **k)


T._atomic_torch_save = _wrap(T._atomic_torch_save, "checkpoint")
scg_models.save_autoencoder = _wrap(scg_models.save_autoencoder, "model")
V.save_png = _wrap(V.save_png, "png")
T.open = _open

if __name__ == "__main__":
    sys.exit(T.main())

"""Atomic file writes shared by the loaders' savers and the trainers.

A file appears whole or not at all: it is written under a temporary name in the same folder,
``.NAME.PID.partial`` (never a model extension, so ComfyUI never lists it), fsynced, then renamed.
:func:`remove_partials` deletes what killed writers left behind.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

#: Endings of files ComfyUI (or a user) would take for a model; no temporary name ends in one.
MODEL_EXTENSIONS = (".safetensors", ".sft", ".pt", ".pth", ".ckpt", ".bin")
TEMP_SUFFIX = ".partial"
_PARTIAL = re.compile(r"^\..+\.(\d+)\.partial$")


def atomic_write(path, write: Callable[[str], None]) -> str:
    """``write(temp_path)`` then rename onto ``path``: readers see the old file or the whole new one.

    The temporary file is fsynced before the rename, and the folder after it; on any failure it is
    removed and the exception propagates. Returns ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (some platforms): the rename is still atomic
        return path
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def remove_partials(folder) -> list[str]:
    """Delete the temporary files of killed writes in ``folder``: ours (``.NAME.PID.partial`` whose
    process is gone), and older writers' ``.tmp-*`` files (``.partial`` ones untouched for 10
    minutes; any with a model extension, which ComfyUI would list). Returns them."""
    folder = os.fspath(folder)
    removed = []
    for name in (os.listdir(folder) if os.path.isdir(folder) else []):
        path = os.path.join(folder, name)
        m = _PARTIAL.match(name)
        if m is not None and not name.startswith(".tmp-"):
            stale = not _alive(int(m.group(1)))
        elif name.startswith(".tmp-") and name.endswith(TEMP_SUFFIX):
            stale = _untouched_for(path, 600)
        else:
            stale = name.startswith(".tmp-") and name.endswith(MODEL_EXTENSIONS)
        if stale and os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
            removed.append(path)
    return removed


def _untouched_for(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > seconds
    except OSError:
        return False


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True

"""``--compile`` in the trainer tiers: is there a C compiler, and a trainer run that must finish in time.

torch.compile's CPU backend (inductor) writes C++ and builds it with the system compiler; without
one the compile tests are skipped loudly (``pytest -rs`` lists the reason), and so they are when
compiling takes longer than :data:`COMPILE_DEADLINE_S` on a slow or busy machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from scg_testing.trainers import child_env

#: seconds a tiny compiled trainer run may take before its test is skipped (said why); the tiny
#: autoencoder run used about 80 s of CPU time on a 2-core machine; ``$SCG_COMPILE_DEADLINE_S`` sets another
COMPILE_DEADLINE_S = float(os.environ.get("SCG_COMPILE_DEADLINE_S", "90"))


def c_compiler() -> str | None:
    """The compiler inductor would use: ``$CXX``/``$CC`` if set and found, else g++, gcc, clang++, clang, cc."""
    for name in (os.environ.get("CXX"), os.environ.get("CC"), "g++", "gcc", "clang++", "clang", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compiler_or_skip() -> str:
    found = c_compiler()
    if found is None:
        pytest.skip("TORCH.COMPILE TEST SKIPPED: no C/C++ compiler on PATH ($CXX, $CC, g++, gcc, clang++, clang, cc); "
                    "inductor cannot build CPU kernels without one")
    return found


def run_or_skip(argv: list[str], what: str) -> subprocess.CompletedProcess:
    """``python ARGV`` in a child (this checkout importable, one thread); skipped loudly past the deadline."""
    try:
        done = subprocess.run([sys.executable, *argv], env=child_env(), capture_output=True, text=True,
                              timeout=COMPILE_DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"TORCH.COMPILE TEST SKIPPED: {what} took more than {COMPILE_DEADLINE_S:g} s on this machine "
                    "(compiling is slow on a small or busy CPU; raise $SCG_COMPILE_DEADLINE_S); nothing was checked")
    assert done.returncode == 0, done.stderr[-3000:]
    return done

"""``--compile`` in the trainer tiers: is there a C compiler, and a trainer run that must finish in time.

torch.compile's CPU backend (inductor) writes C++ and builds it with the system compiler. Without one, or
when a tiny compiled trainer run takes longer than :data:`COMPILE_DEADLINE_S`:

* under ``CI`` (true, 1, yes or on) the test FAILS, saying which of the two happened: CI must check ``--compile``
  (``.ci/run`` gives it 900 s);
* elsewhere (a user's slow or busy machine) it is SKIPPED loudly (``pytest -rs`` lists the reason, the per-tier
  summary counts it), since a slow compiler says nothing about the code.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from scg_testing.trainers import child_env

#: seconds a tiny compiled trainer run may take; the tiny autoencoder run used about 80 s of CPU time on a
#: 2-core machine; ``$SCG_COMPILE_DEADLINE_S`` sets another
COMPILE_DEADLINE_S = float(os.environ.get("SCG_COMPILE_DEADLINE_S", "90"))
#: the same reading of ``$CI`` as tests/conftest.py
CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def _cannot_check(why: str) -> None:
    """Fail under CI, skip loudly elsewhere: the compiled path was not checked, for ``why``."""
    if CI:
        pytest.fail(f"TORCH.COMPILE TEST FAILED (CI=true): {why}; nothing was checked", pytrace=False)
    pytest.skip(f"TORCH.COMPILE TEST SKIPPED: {why}; nothing was checked")


def c_compiler() -> str | None:
    """The compiler inductor would use: ``$CXX``/``$CC`` if set and found, else g++, gcc, clang++, clang, cc."""
    for name in (os.environ.get("CXX"), os.environ.get("CC"), "g++", "gcc", "clang++", "clang", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compiler_or_skip() -> str:
    """The C compiler; without one the test fails under CI and is skipped loudly elsewhere."""
    found = c_compiler()
    if found is None:
        _cannot_check("no C/C++ compiler on PATH ($CXX, $CC, g++, gcc, clang++, clang, cc); inductor cannot build "
                      "CPU kernels without one")
    return found


def run_or_skip(argv: list[str], what: str) -> subprocess.CompletedProcess:
    """``python ARGV`` in a child (this checkout importable, one thread). Past the deadline the test fails under
    CI and is skipped loudly elsewhere."""
    try:
        done = subprocess.run([sys.executable, *argv], env=child_env(), capture_output=True, text=True,
                              timeout=COMPILE_DEADLINE_S)
    except subprocess.TimeoutExpired:
        _cannot_check(f"{what} took more than {COMPILE_DEADLINE_S:g} s on this machine (compiling is slow on a "
                      "small or busy CPU; raise $SCG_COMPILE_DEADLINE_S)")
    assert done.returncode == 0, done.stderr[-3000:]
    return done

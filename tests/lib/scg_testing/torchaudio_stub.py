"""!!! A stand-in ``torchaudio`` for hosts that import it unconditionally (ComfyUI 0.33's comfy.sd).

torchaudio has no wheel for the torch this project tests with. Audio never runs in our tests; any
use of the stub raises, naming it. Each use is announced loudly.
"""
from __future__ import annotations

import importlib.machinery
import logging
import sys
import types
from pathlib import Path

_NAMES = ("torchaudio", "torchaudio.functional", "torchaudio.transforms")
_PACKAGE_SOURCE = '''"""STUB torchaudio made by the SCG tests: no torchaudio wheel exists for this torch.
Importing works (ComfyUI imports it at start-up); any use raises."""
def __getattr__(name):
    raise ImportError(f"torchaudio.{name}: torchaudio is a stub in the SCG tests")
'''


def install() -> bool:
    """Put the stub in ``sys.modules`` when ``import torchaudio`` fails; True when it did.

    The modules have specs because transformers probes ``importlib.util.find_spec("torchaudio")``.
    """
    try:
        import torchaudio  # noqa: F401
        return False
    except ImportError:
        pass

    def missing(name):
        raise AttributeError(f"{name}: torchaudio is a stub in the SCG tests (no wheel for this torch)")

    for name in _NAMES:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name == "torchaudio")
        module.__path__ = []
        module.__getattr__ = lambda attr, name=name: missing(f"{name}.{attr}")
        sys.modules[name] = module
    sys.modules["torchaudio"].functional = sys.modules["torchaudio.functional"]
    sys.modules["torchaudio"].transforms = sys.modules["torchaudio.transforms"]
    logging.getLogger("SCG.tests").warning("!!! torchaudio is missing: a STUB module stands in for it")
    return True


def write_package(folder: Path) -> Path:
    """A stub ``torchaudio`` package in ``folder``, for a server subprocess's PYTHONPATH only."""
    pkg = Path(folder) / "torchaudio"
    pkg.mkdir(parents=True, exist_ok=True)
    for module in ("__init__", "functional", "transforms"):
        (pkg / f"{module}.py").write_text(_PACKAGE_SOURCE)
    print(f"\n!!! torchaudio is not installed: the ComfyUI server runs with a STUB torchaudio from {folder} "
          "(audio nodes fail if used) !!!", file=sys.stderr)
    return Path(folder)

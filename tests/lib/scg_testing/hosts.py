"""The ComfyUI checkouts (and frontends) the host and browser tiers run on.

One host per pytest run: ``$COMFYUI_PATH``, else the ComfyUI that holds this extension in
``custom_nodes/``, else ``~/comfy/ComfyUI``. ``$SCG_FRONTEND_ROOT`` (a folder holding the frontend's
``index.html``) makes the browser tier serve that frontend with ``--front-end-root``; unset, the host
serves the frontend package installed for it.

``tests/run`` runs the host-dependent tiers once per entry of :func:`matrix`:

    python tests/lib/scg_testing/hosts.py            print the host of this run, or exit 1
    python tests/lib/scg_testing/hosts.py --matrix   print "LABEL<TAB>HOST<TAB>FRONTEND_ROOT" per tested pair
"""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
COMFY_HOME = Path(os.environ.get("SCG_COMFY_HOME", Path.home() / "comfy"))

# The support matrix: (checkout under ~/comfy, frontend root under ~/comfy or "" for the host's own package).
MATRIX = (
    ("ComfyUI", ""),  # ComfyUI 0.8.0 with the frontend its requirements pin (1.35.9)
    ("ComfyUI-0.33", "frontend-1.58.1/comfyui_frontend_package/static"),  # ComfyUI 0.33.0 + frontend 1.58.1
)


def is_host(path: str | os.PathLike | None) -> bool:
    return bool(path) and (Path(path) / "comfy" / "model_management.py").is_file() and (Path(path) / "nodes.py").is_file()


def find_host() -> Path | None:
    """The ComfyUI checkout of this run (see the module docstring for the order), or None."""
    candidates = [os.environ.get("COMFYUI_PATH")]
    if ROOT.parent.name == "custom_nodes":
        candidates.append(str(ROOT.parent.parent))
    candidates.append(str(COMFY_HOME / "ComfyUI"))
    for c in candidates:
        if is_host(c):
            return Path(c).resolve()
    return None


def frontend_root() -> Path | None:
    """The frontend folder to serve with ``--front-end-root`` (``$SCG_FRONTEND_ROOT``), or None."""
    value = os.environ.get("SCG_FRONTEND_ROOT")
    return Path(value).resolve() if value else None


def host_version(host: Path) -> str:
    return str(runpy.run_path(str(host / "comfyui_version.py"))["__version__"])


def matrix() -> tuple[list[tuple[str, Path, Path | None]], list[str]]:
    """The (label, host, frontend root) pairs found, and a line for each pair that is missing."""
    if os.environ.get("COMFYUI_PATH"):
        host = find_host()
        return ([(f"ComfyUI {host_version(host)}", host, frontend_root())] if host else
                [], [] if host else [f"$COMFYUI_PATH={os.environ['COMFYUI_PATH']} holds no ComfyUI"])
    found, missing = [], []
    for checkout, frontend in MATRIX:
        host = COMFY_HOME / checkout
        fe = COMFY_HOME / frontend if frontend else None
        if not is_host(host):
            missing.append(f"no ComfyUI at {host}")
        elif fe is not None and not (fe / "index.html").is_file():
            missing.append(f"no frontend at {fe} (for {host})")
        else:
            label = f"ComfyUI {host_version(host)}" + (f" + {fe.parent.parent.name}" if fe else "")
            found.append((label, host.resolve(), fe))
    if not found and (host := find_host()):
        found.append((f"ComfyUI {host_version(host)}", host, frontend_root()))
    return found, missing


if __name__ == "__main__":
    if "--matrix" in sys.argv[1:]:
        pairs, absent = matrix()
        for line in absent:
            print(f"!!! {line}", file=sys.stderr)
        for label, host, fe in pairs:
            print(f"{label}\t{host}\t{fe or ''}")
        sys.exit(0 if pairs else 1)
    host = find_host()
    if host is None:
        sys.exit(1)
    print(host)

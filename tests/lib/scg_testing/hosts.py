"""The ComfyUI checkouts (and frontends) the host and browser tiers run on.

One host per pytest run: ``$COMFYUI_PATH``, else the ComfyUI that holds this extension in
``custom_nodes/``, else ``~/comfy/ComfyUI`` (``$SCG_COMFY_HOME`` replaces ``~/comfy``; ``.ci/setup-hosts.sh``
lays the matrix out there). Advanced-ControlNet, which the host tier loads as a second pack, is
``$SCG_ACN_PATH``, else ``ComfyUI-Advanced-ControlNet`` in the same folder. ``$SCG_FRONTEND_ROOT`` (a folder holding the frontend's
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


def acn_path() -> Path:
    """The Advanced-ControlNet folder the host tier loads as a second pack (it may be missing)."""
    return Path(os.environ.get("SCG_ACN_PATH", COMFY_HOME / "ComfyUI-Advanced-ControlNet"))


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


def frontend_version(host: Path, fe: Path | None) -> str:
    """The frontend a host serves: the package at ``fe`` (``.../frontend-X/comfyui_frontend_package/static``),
    else the version its requirements pin."""
    if fe is not None:
        return fe.parent.parent.name.removeprefix("frontend-")
    for line in (host / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("comfyui-frontend-package=="):
            return line.split("==", 1)[1].strip()
    return "?"


def label_of(host: Path, fe: Path | None) -> str:
    return f"ComfyUI {host_version(host)} + frontend {frontend_version(host, fe)}"


def matrix() -> tuple[list[tuple[str, Path, Path | None]], list[str]]:
    """The (label, host, frontend root) pairs found, and a line for each pair that is missing."""
    if os.environ.get("COMFYUI_PATH"):
        host = find_host()
        return ([(label_of(host, frontend_root()), host, frontend_root())] if host else
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
            found.append((label_of(host, fe), host.resolve(), fe))
    if not found and (host := find_host()):
        found.append((label_of(host, frontend_root()), host, frontend_root()))
    if found and not (acn_path() / "__init__.py").is_file():
        missing.append(f"no Advanced-ControlNet at {acn_path()} (set $SCG_ACN_PATH)")
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

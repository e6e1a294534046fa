"""Every import has an install step: what the project's code imports is named by one of its requirements files.

Read from the code itself (every top-level ``import``/``from`` in every tracked ``.py`` file), so a new import
without an install step fails here before it lands. Not checked: the standard library, the project's own
packages, torch/torchvision (they come from ComfyUI's environment) and the host's own modules (ComfyUI is
not installable; the host tier imports it from its checkout).
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENT_FILES = sorted(ROOT.glob("requirements*.txt"))
OURS = {"scg_models", "train", "nodes", "bench", "scripts", "scg_testing", "tests"}
FROM_THE_ENVIRONMENT = {"torch", "torchvision"}
# ComfyUI's top-level modules (and the torchaudio the tests stub for it)
HOST = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "comfy_config", "folder_paths", "execution",
        "server", "latent_preview", "node_helpers", "app", "utils", "torchaudio"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def required() -> dict[str, Path]:
    """Distribution name (canonical) -> the requirements file naming it."""
    names = {}
    for path in REQUIREMENT_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                names[canonical(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0])] = path
    return names


def imports() -> dict[str, list[str]]:
    """Top-level module -> the files importing it (absolute imports only)."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    found: dict[str, list[str]] = {}
    for rel in files.stdout.split():
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                found.setdefault(module.split(".")[0], []).append(rel)
    return found


def third_party() -> dict[str, list[str]]:
    return {m: files for m, files in imports().items()
            if m not in sys.stdlib_module_names and m not in OURS | FROM_THE_ENVIRONMENT | HOST}


def test_the_scan_sees_the_project_s_third_party_imports():
    modules = third_party()
    assert {"numpy", "safetensors", "PIL", "pytest", "hypothesis"} <= set(modules)
    assert "os" not in modules and "scg_models" not in modules and "comfy" not in modules


def test_every_import_has_an_install_step():
    names = required()
    dists = importlib.metadata.packages_distributions()
    missing = []
    for module, files in sorted(third_party().items()):
        provided = {canonical(d) for d in dists.get(module, [])}
        if not provided:
            missing.append(f"{module} (imported by {files[0]}) is not installed, and so no requirements file "
                           "can be checked for it")
        elif not provided & set(names):
            missing.append(f"{module} (imported by {files[0]}) comes from {', '.join(sorted(provided))}, "
                           f"which no requirements file names ({', '.join(p.name for p in REQUIREMENT_FILES)})")
    assert not missing, "\n".join(missing)

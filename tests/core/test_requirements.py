"""Every import has an install step, and ``requirements.txt`` is exactly what the extension imports.

Read from the code itself, so a new import without an install step fails here before it lands:

* every ``import``/``from`` in every tracked ``.py`` file is named by one of the requirements files;
* the imports ComfyUI reaches when it loads the extension (``__init__.py`` and every module of the project it
  imports, at any depth, function bodies included) are exactly the packages of ``requirements.txt``: nothing
  the nodes need is left to the trainers' file, and nothing there is unused.

Not checked: the standard library, torch/torchvision (they come from ComfyUI's environment) and the host's own
modules (ComfyUI is not installable; the host tier imports it from its checkout).
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


def absolute_imports(path: Path) -> list[str]:
    """Top-level modules of the absolute imports of one file (anywhere in it, function bodies included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module.split(".")[0])
    return found


def imports() -> dict[str, list[str]]:
    """Top-level module -> the tracked files importing it (absolute imports only)."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    found: dict[str, list[str]] = {}
    for rel in files.stdout.split():
        for module in absolute_imports(ROOT / rel):
            found.setdefault(module, []).append(rel)
    return found


def _module_file(parts: list[str]) -> Path | None:
    """The project's file of a dotted module name (a package's ``__init__.py``), or None."""
    path = ROOT.joinpath(*parts)
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if parts and candidate.is_file():
            return candidate
    return None


def runtime_files() -> set[Path]:
    """``__init__.py`` (what ComfyUI imports) and every project module it imports, transitively."""
    seen, todo = set(), [ROOT / "__init__.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = list(path.relative_to(ROOT).parent.parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name.split(".") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (package[:len(package) - node.level + 1] if node.level else []) + \
                    (node.module.split(".") if node.module else [])
                names = [base] + [base + [a.name] for a in node.names]  # "from . import x": x may be a module
            else:
                continue
            todo += [f for f in map(_module_file, names) if f is not None]
    return seen


def third_party(imported: dict[str, list[str]]) -> dict[str, list[str]]:
    return {m: files for m, files in imported.items()
            if m not in sys.stdlib_module_names and m not in OURS | FROM_THE_ENVIRONMENT | HOST}


def distributions(module: str) -> set[str]:
    return {canonical(d) for d in importlib.metadata.packages_distributions().get(module, [])}


def test_every_import_has_an_install_step():
    names = required()
    modules = third_party(imports())
    # the scan sees the project's imports, and tells ours and the standard library's apart
    assert {"numpy", "safetensors", "PIL", "pytest", "hypothesis"} <= set(modules)
    assert "os" not in modules and "scg_models" not in modules and "comfy" not in modules
    dists = importlib.metadata.packages_distributions()
    missing = []
    for module, files in sorted(modules.items()):
        provided = {canonical(d) for d in dists.get(module, [])}
        if not provided:
            missing.append(f"{module} (imported by {files[0]}) is not installed, and so no requirements file "
                           "can be checked for it")
        elif not provided & set(names):
            missing.append(f"{module} (imported by {files[0]}) comes from {', '.join(sorted(provided))}, "
                           f"which no requirements file names ({', '.join(p.name for p in REQUIREMENT_FILES)})")
    assert not missing, "\n".join(missing)


def test_requirements_txt_is_what_the_extension_imports():
    files = runtime_files()
    rel = {str(f.relative_to(ROOT)) for f in files}
    # the walk reaches the nodes and the core, and not the trainers' side
    assert {"nodes/__init__.py", "nodes/apply.py", "scg_models/formats.py"} <= rel, sorted(rel)
    assert not {r for r in rel if r.startswith(("train/", "bench/", "tests/"))}, sorted(rel)
    imported: dict[str, list[str]] = {}
    for path in sorted(files):
        for module in absolute_imports(path):
            imported.setdefault(module, []).append(str(path.relative_to(ROOT)))
    needed = {}
    for module, importers in sorted(third_party(imported).items()):
        provided = distributions(module)
        assert provided, f"{module} (imported by {importers[0]}) is not installed"
        needed.update({d: f"{module} (imported by {importers[0]})" for d in provided})
    listed = {name for name, path in required().items() if path.name == "requirements.txt"}
    assert not set(needed) - listed, "imported when ComfyUI loads the extension, missing from requirements.txt: " + \
        ", ".join(needed[d] for d in sorted(set(needed) - listed))
    assert not listed - set(needed), f"in requirements.txt but never imported by the extension: {sorted(listed - set(needed))}"

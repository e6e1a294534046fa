"""The shipped workflows: ``workflows/*.json`` (UI format: the templates), their API-format twins in
``workflows/api/`` (what ``POST /prompt`` takes), and the UI -> API converter both test tiers use."""
from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType, SimpleNamespace

ROOT = Path(__file__).resolve().parents[3]
WORKFLOW_DIR = ROOT / "workflows"
API_DIR = WORKFLOW_DIR / "api"


def _converter() -> ModuleType:
    """``scg_testing.ui_workflow`` where it lives there, else ``tests/host/ui_workflow.py`` loaded by path."""
    try:
        return importlib.import_module("scg_testing.ui_workflow")
    except ModuleNotFoundError as exc:
        if exc.name != "scg_testing.ui_workflow":
            raise
    spec = importlib.util.spec_from_file_location("scg_ui_workflow", ROOT / "tests" / "host" / "ui_workflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ui_workflow = _converter()


def names() -> list[str]:
    """The template names (file stems of ``workflows/*.json``), sorted."""
    return sorted(p.stem for p in WORKFLOW_DIR.glob("*.json"))


def read(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text(encoding="utf-8"))


def api_path(name: str) -> Path:
    return API_DIR / f"{name}.json"


def to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt of a UI workflow, from a server's ``/object_info`` (the node definitions it runs)."""
    classes = {k: SimpleNamespace(INPUT_TYPES=(lambda spec=v["input"]: spec)) for k, v in object_info.items()}
    return ui_workflow.ui_to_api(workflow, classes)


def dump(prompt: dict) -> str:
    """The text of an API file: sorted node ids, two-space indent, ASCII escapes, final newline."""
    ordered = {k: prompt[k] for k in sorted(prompt, key=int)}
    return json.dumps(ordered, indent=2) + "\n"


#: the loaders of SD1.5 weights in the workflows (node type -> model folder): files no user has the first time
SD15_LOADERS = {"CheckpointLoaderSimple": "checkpoints", "ControlNetLoader": "controlnet",
                "LoadSCGControlNet": "controlnet"}

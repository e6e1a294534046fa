"""The shipped workflows: ``workflows/*.json`` (UI format: the templates), their API-format twins in
``workflows/api/`` (what ``POST /prompt`` takes), and the UI -> API converter both test tiers use."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from scg_testing import ui_workflow

ROOT = Path(__file__).resolve().parents[3]
WORKFLOW_DIR = ROOT / "workflows"
API_DIR = WORKFLOW_DIR / "api"


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

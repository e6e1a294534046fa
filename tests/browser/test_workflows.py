"""Every shipped workflow (workflows/*.json) in ComfyUI's real frontend, the way users use it.

One ComfyUI server (this repository symlinked into its ``custom_nodes/`` as ``scg-comfy``)
and one headless Chromium page serve every test in this module. For each workflow:

* it is loaded the way a drag-and-drop loads it (``app.handleFile(file, "file_drop")``)
  with no missing-node, missing-model or widget warning;
* the frontend's own conversion (``app.graphToPrompt()``) gives the same API prompt as
  tests/host/ui_workflow.py derives from the file and the server's ``/object_info``
  (every widget value lands in the input it was written for);
* it is queued with the frontend's own call (``app.queuePrompt``) and the server
  accepts it (no node errors). The SD1.5 workflows run against stand-in model files
  (tiny valid files with the names the workflows use), so a run may end in an error,
  but only in a model loader, never in validation;
* ``hypercolumn_preview`` runs to the end with a random autoencoder in the authors'
  layout, and every preview image is in the page (``app.nodeOutputs`` and the loaded
  ``<img>`` of each Preview Image node); screenshot.

Also: ``GET /api/workflow_templates`` lists the workflows as this pack's templates, the
page's template browser knows them, and one loads like a click in the template browser.

Screenshots go to ``$SCG_SCREENSHOT_DIR`` (relative paths are taken from the repository
root, e.g. ``SCG_SCREENSHOT_DIR=docs/img``) when it is set, else into pytest's tmp dir:
``sd15_scg_txt2img_graph.png`` and ``hypercolumn_preview_ran.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from scg_testing import browser as harness
from scg_testing import workflows

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
PACK = "scg-comfy"  # the folder name the README's install uses; the template browser's module name
WORKFLOWS = workflows.names()
RUNS_TO_THE_END = "hypercolumn_preview"
GRAPH_SHOT = ("sd15_scg_txt2img", "sd15_scg_txt2img_graph.png")
RAN_SHOT = (RUNS_TO_THE_END, "hypercolumn_preview_ran.png")
#: the graph screenshot's workflow first (no earlier run in the queue panel), then the one that runs
ORDER = sorted(WORKFLOWS, key=lambda n: (n != GRAPH_SHOT[0], n != RUNS_TO_THE_END, n))
#: big enough for the graphs to fit at a readable zoom
WINDOW = (1600, 1000)

#: loader node -> (widget index of the file name, model folder)
LOADERS = {
    "CheckpointLoaderSimple": (0, "checkpoints"),
    "ControlNetLoader": (0, "controlnet"),
    "LoadSCGControlNet": (0, "controlnet"),
    "LoadSCGAutoencoder": (0, "scg"),
}

#: console lines of failed outside requests (none can succeed here), not about the workflow
NETWORK_NOISE = ("Failed to fetch", "net::ERR", "NetworkError")
#: README screenshots: palette PNGs stay well under 400 kB
SCREENSHOT_COLOURS = 256

RUN_TIMEOUT = float(os.environ.get("SCG_BROWSER_RUN_TIMEOUT", "150"))


def _screenshot_dir(tmp_path_factory) -> Path:
    env = os.environ.get("SCG_SCREENSHOT_DIR")
    if not env:
        return tmp_path_factory.mktemp("screenshots")
    path = Path(env)
    return path if path.is_absolute() else ROOT / path


# --------------------------------------------------------------------------------------
# stand-in model files
# --------------------------------------------------------------------------------------


def _tiny_safetensors(path: Path) -> None:
    """A valid safetensors file with one float32 zero (not a model: loading it as one fails)."""
    header = json.dumps({"scg_stand_in": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")


def _tiny_pickle_ckpt(path: Path) -> None:
    """A PyTorch checkpoint with one tensor: a file the loaders read, then refuse as a model."""
    import torch

    torch.save({"state_dict": {"scg_stand_in": torch.zeros(1)}}, path)


def _prepare_base_dir(base: Path) -> dict[str, set[str]]:
    """Stand-in model files and input images that every workflow names, in ComfyUI's base dir."""
    made: dict[str, set[str]] = {}
    for name in WORKFLOWS:
        for node in workflows.read(name)["nodes"]:
            values = node.get("widgets_values") or []
            if node["type"] == "LoadSCGAutoencoder":
                continue  # the shipped autoencoder (scg_models/weights) runs
            if node["type"] in LOADERS:
                index, folder = LOADERS[node["type"]]
                made.setdefault(folder, set()).add(values[index])
            elif node["type"] == "LoadImage":
                made.setdefault("input", set()).add(values[0])
    for image in made.pop("input", ()):
        (base / "input").mkdir(parents=True, exist_ok=True)
        shutil.copy(workflows.WORKFLOW_DIR / image, base / "input" / image)
    for folder, names in made.items():
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        for file_name in names:
            path = base / "models" / folder / file_name
            if file_name.endswith(".safetensors"):
                _tiny_safetensors(path)
            else:
                _tiny_pickle_ckpt(path)
    return made


# --------------------------------------------------------------------------------------
# fixtures: one server, one page for the module
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("comfy")
    return SimpleNamespace(workdir=workdir, files=_prepare_base_dir(workdir / "base"))


@pytest.fixture(scope="module")
def server(stand_ins):
    with harness.comfyui_server(
        stand_ins.workdir,
        packs={PACK: ROOT},
        # README screenshots: no minimap over the canvas, node text drawn at any zoom
        settings={"Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 0},
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with harness.chromium_page(server.url, tmp_path_factory.mktemp("chromium"), window_size=WINDOW) as driver:
        yield driver


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return _screenshot_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def object_info(server):
    return harness.object_info(server.url)


# --------------------------------------------------------------------------------------
# page state
# --------------------------------------------------------------------------------------

def _previews_shown(page, ids) -> dict | None:
    state = harness.run_js(page, "previews", list(ids))
    for entry in state.values():
        if not entry["outputs"] or len(entry["imgs"]) != len(entry["outputs"]):
            return None
        if not all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in entry["imgs"]):
            return None
    return state


def _wait_previews(page, ids, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = _previews_shown(page, ids)
        if state:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"previews not shown in the page after {timeout:.0f}s: "
                                 f"{harness.run_js(page, 'previews', list(ids))}")
        time.sleep(0.25)


def _clean_screenshot(page, path: Path) -> Path:
    """Fit the graph to the window, close every dialog, screenshot; checks it is a real PNG."""
    harness.close_dialogs(page)
    harness.run_js(page, "fit_view")
    assert harness.open_dialogs(page) == []
    shot = _compact_png(harness.screenshot(page, path))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, (shot, len(data))
    return shot


def _compact_png(path: Path) -> Path:
    """Re-save as a 256-colour PNG (the UI is flat colours; previews survive) when Pillow is there."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - ComfyUI itself needs Pillow
        return path
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    rgb.quantize(colors=SCREENSHOT_COLOURS, method=Image.Quantize.MEDIANCUT,
                 dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def _strip_prompt(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def _execution_error(entry: dict) -> dict | None:
    for kind, data in harness.prompt_error_messages(entry):
        return {"kind": kind, **(data or {})}
    return None


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------


def test_every_workflow_is_covered():
    assert RUNS_TO_THE_END in WORKFLOWS and GRAPH_SHOT[0] in WORKFLOWS
    assert len(WORKFLOWS) >= 4, WORKFLOWS


@pytest.mark.parametrize("name", ORDER)
def test_workflow_drops_converts_queues(name, server, page, object_info, shots):
    workflow = workflows.read(name)

    # 1. dropped into the page: no missing node, no missing model, every widget value valid
    res = harness.load_workflow(page, workflow, filename=f"{name}.json")
    assert res.ok, res.warnings
    assert [c for c in res.console if not any(n in c["text"] for n in NETWORK_NOISE)] == []
    assert res.missing_types == [] and res.missing_models == []
    assert sorted((n["id"], n["type"]) for n in res.nodes) == sorted((str(n["id"]), n["type"]) for n in workflow["nodes"])
    assert not [n for n in res.nodes if n["has_errors"]]

    # 2. the frontend's own conversion puts every widget value where the file means it
    prompt = harness.graph_to_prompt(page)
    assert _strip_prompt(prompt) == _strip_prompt(workflows.to_api(workflow, object_info))

    if name == GRAPH_SHOT[0]:
        _clean_screenshot(page, shots / GRAPH_SHOT[1])

    # 3. queued with the frontend's own call: the server accepts it
    q = harness.queue_current_graph(page)
    assert q.ok, (q.error, q.node_errors, q.raw.get("toasts"))
    # (a run that already failed in a loader may have opened its execution-error dialog: checked below)
    assert set(q.new_dialogs) <= {"global-execution-error"}, q.new_dialogs
    assert (q.response or {}).get("node_errors") in ({}, None), q.response

    entry = harness.wait_for_prompt(server.url, q.prompt_id, timeout=RUN_TIMEOUT)
    status = entry["status"]["status_str"]
    error = _execution_error(entry)
    print(f"{name}: {status}", error and (error.get("node_type"), str(error.get("exception_message"))[:300]))

    if name == RUNS_TO_THE_END:
        # 4. runs to the end; the previews are in the page itself
        assert status == "success" and error is None, entry["status"]
        preview_ids = [str(n["id"]) for n in workflow["nodes"] if n["type"] == "PreviewImage"]
        assert preview_ids
        assert set(preview_ids) <= set(entry["outputs"]), entry["outputs"].keys()
        state = _wait_previews(page, preview_ids)
        for node_id in preview_ids:
            assert state[node_id]["outputs"] == [i["filename"] for i in entry["outputs"][node_id]["images"]]
        _clean_screenshot(page, shots / RAN_SHOT[1])
        # still shown after the screenshot's redraw
        assert _previews_shown(page, preview_ids)
    else:
        # stand-in weights: the run may stop, but only where a model file is loaded
        if status != "success":
            assert error is not None, entry["status"]
            assert error["kind"] == "execution_error", error
            loaders = {str(n["id"]) for n in workflow["nodes"] if n["type"] in LOADERS}
            assert error.get("node_type") in LOADERS and str(error.get("node_id")) in loaders, error
        harness.close_dialogs(page)  # the execution-error dialog, if any


def test_template_browser_lists_and_loads_the_workflows(server, page):
    listed = harness.list_templates(server.url)
    assert sorted(listed.get(PACK, [])) == WORKFLOWS, listed

    known = harness.page_templates(page)
    assert known["loaded"] is True
    assert sorted(known["custom"].get(PACK, [])) == WORKFLOWS, known["custom"]
    assert f"extension-{PACK}" in known["categories"], known["categories"]

    res = harness.load_template(page, PACK, GRAPH_SHOT[0])
    assert res.ok, res.warnings
    assert sorted(n["type"] for n in res.nodes) == sorted(n["type"] for n in workflows.read(GRAPH_SHOT[0])["nodes"])

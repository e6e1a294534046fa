"""Every shipped workflow (``workflows/*.json``, the pack's templates) in ComfyUI's real frontend.

One ComfyUI server (this repository symlinked into its ``custom_nodes/`` as ``scg-pattern-completion``, stand-in SD1.5
files with the names the workflows use) and one headless Chromium page serve the module. For each workflow:

* it loads the way a drop loads it (``app.handleFile``) with no missing-node, missing-model or widget warning;
* the frontend's own conversion (``app.graphToPrompt()``) equals the converter's (``scg_testing.workflows``,
  from the server's ``/object_info``), and so does the API-format file shipped in ``workflows/api/``;
* the frontend's own Run (``app.queuePrompt``) is accepted; the SD1.5 workflows may then stop, but only in a
  model loader (stand-in weights); the hypercolumn preview runs to the end with the SHIPPED autoencoder and
  every preview is in the page;
* its thumbnail ``workflows/<name>.jpg`` is served where the template browser looks for it.

The input folder holds a user's own ``scg_example.jpg`` and ``scg_example_dark.jpg``: the extension's first-run
setup must keep them, and add the other example images.

``SCG_SCREENSHOT_DIR=docs/img`` writes the README's screenshots (relative to the repository root);
``SCG_WRITE_WORKFLOW_FILES=1`` rewrites the thumbnails and ``workflows/api/*.json`` from this run instead of
checking them.
"""

from __future__ import annotations

import io
import json
import os
import struct
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from scg_testing import browser as harness
from scg_testing import workflows

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
PACK = "scg-pattern-completion"  # the folder the README's git clone makes; the template browser lists the pack by it
WORKFLOWS = workflows.names()
RUNS_TO_THE_END = "SCG hypercolumn preview"
GRAPH_SHOT = ("SCG text to image (SD1.5)", "sd15_scg_txt2img_graph.png")
RAN_SHOT = (RUNS_TO_THE_END, "hypercolumn_preview_ran.png")
#: the graph screenshot's workflow first (no earlier run in the queue panel), then the one that runs
ORDER = sorted(WORKFLOWS, key=lambda n: (n != GRAPH_SHOT[0], n != RUNS_TO_THE_END, n))
WINDOW = (1600, 1000)  # big enough for the graphs to fit at a readable zoom
WRITE = os.environ.get("SCG_WRITE_WORKFLOW_FILES") == "1"
THUMBNAIL = (512, 384)
#: console lines of failed outside requests (none can succeed here), not about the workflow
NETWORK_NOISE = ("Failed to fetch", "net::ERR", "NetworkError")
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


USERS_IMAGES = ("scg_example.jpg", "scg_example_dark.jpg")


def _user_image(name: str = "scg_example.jpg") -> bytes:
    """A user's own file of an example's name: the example re-encoded (the same picture, other bytes)."""
    from PIL import Image

    with Image.open(workflows.WORKFLOW_DIR / name) as im:
        out = io.BytesIO()
        im.convert("RGB").save(out, "JPEG", quality=70)
    return out.getvalue()


def _prepare_base_dir(base: Path) -> None:
    """Stand-in files for the SD1.5 models the workflows name (the shipped autoencoder is used as is)."""
    for name in WORKFLOWS:
        for node in workflows.read(name)["nodes"]:
            folder = workflows.SD15_LOADERS.get(node["type"])
            if folder:
                path = base / "models" / folder / node["widgets_values"][0]
                path.parent.mkdir(parents=True, exist_ok=True)
                (_tiny_safetensors if path.suffix == ".safetensors" else _tiny_pickle_ckpt)(path)
    (base / "input").mkdir(parents=True, exist_ok=True)
    for name in USERS_IMAGES:
        (base / "input" / name).write_bytes(_user_image(name))


# --------------------------------------------------------------------------------------
# fixtures: one server, one page for the module
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("comfy")
    _prepare_base_dir(workdir / "base")
    with harness.comfyui_server(
        workdir,
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
    rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                 dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def _thumbnail(shot: Path, name: str) -> None:
    """``workflows/<name>.jpg`` from a screenshot of the fitted graph: the canvas below the frontend's bars,
    trimmed to the nodes, scaled into the template card's size on the canvas colour."""
    from PIL import Image, ImageChops

    with Image.open(shot) as im:
        canvas = im.convert("RGB").crop((120, 130, im.width - 8, im.height - 80))
    background = canvas.getpixel((2, 2))
    diff = ImageChops.difference(canvas, Image.new("RGB", canvas.size, background)).convert("L")
    box = diff.point(lambda v: 255 if v > 24 else 0).getbbox()
    if box:
        canvas = canvas.crop((max(box[0] - 12, 0), max(box[1] - 12, 0), box[2] + 12, box[3] + 12))
    canvas.thumbnail(THUMBNAIL, Image.Resampling.LANCZOS)
    card = Image.new("RGB", THUMBNAIL, background)
    card.paste(canvas, ((THUMBNAIL[0] - canvas.width) // 2, (THUMBNAIL[1] - canvas.height) // 2))
    card.save(workflows.WORKFLOW_DIR / f"{name}.jpg", "JPEG", quality=88, optimize=True)


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
    assert len(WORKFLOWS) >= 9, WORKFLOWS


def test_first_load_kept_the_users_images(server):
    for name in USERS_IMAGES:
        assert (server.input_dir / name).read_bytes() == _user_image(name) != (workflows.WORKFLOW_DIR / name).read_bytes()
    for example in workflows.WORKFLOW_DIR.glob("scg_example*.jpg"):  # the others: the shipped files
        if example.name not in USERS_IMAGES:
            assert (server.input_dir / example.name).read_bytes() == example.read_bytes()
    assert (server.models_dir / "scg").is_dir()


@pytest.mark.parametrize("name", ORDER)
def test_workflow_drops_converts_queues(name, server, page, object_info, shots, tmp_path):
    workflow = workflows.read(name)

    # 1. dropped into the page: no missing node, no missing model, every widget value valid
    res = harness.load_workflow(page, workflow, filename=f"{name}.json")
    assert res.ok, res.warnings
    assert [c for c in res.console if not any(n in c["text"] for n in NETWORK_NOISE)] == []
    assert res.missing_types == [] and res.missing_models == []
    assert sorted((n["id"], n["type"]) for n in res.nodes) == sorted((str(n["id"]), n["type"]) for n in workflow["nodes"])
    assert not [n for n in res.nodes if n["has_errors"]]

    # 2. the frontend's own conversion puts every widget value where the file means it; the shipped API
    #    file is the converter's output
    prompt = harness.graph_to_prompt(page)
    expected = workflows.to_api(workflow, object_info)
    assert _strip_prompt(prompt) == _strip_prompt(expected)
    if WRITE:
        workflows.API_DIR.mkdir(exist_ok=True)
        workflows.api_path(name).write_text(workflows.dump(expected), encoding="utf-8")
    assert workflows.api_path(name).read_text(encoding="utf-8") == workflows.dump(expected)

    shot = _clean_screenshot(page, shots / GRAPH_SHOT[1] if name == GRAPH_SHOT[0] else tmp_path / "graph.png")

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
        # 4. runs to the end with the shipped autoencoder; the previews are in the page itself
        assert status == "success" and error is None, entry["status"]
        preview_ids = [str(n["id"]) for n in workflow["nodes"] if n["type"] == "PreviewImage"]
        assert preview_ids and set(preview_ids) <= set(entry["outputs"]), entry["outputs"].keys()
        state = harness.previews(page, preview_ids)
        for node_id in preview_ids:
            assert state[node_id]["outputs"] == [i["filename"] for i in entry["outputs"][node_id]["images"]]
        shot = _clean_screenshot(page, shots / RAN_SHOT[1])
        assert harness.previews(page, preview_ids, timeout=5)  # still shown after the screenshot's redraw
    else:
        # stand-in weights: the run may stop, but only where an SD1.5 model file is loaded
        if status != "success":
            assert error is not None and error["kind"] == "execution_error", entry["status"]
            loaders = {str(n["id"]) for n in workflow["nodes"] if n["type"] in workflows.SD15_LOADERS}
            assert error.get("node_type") in workflows.SD15_LOADERS and str(error.get("node_id")) in loaders, error
        harness.close_dialogs(page)  # the execution-error dialog, if any
    if WRITE:
        _thumbnail(shot, name)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_thumbnail_is_served_where_the_template_browser_looks(name, server):
    # the frontend's thumbnail of a custom node's template: /api/workflow_templates/<pack>/<name>.jpg
    from PIL import Image

    url = f"{server.url}/api/workflow_templates/{PACK}/{urllib.parse.quote(name)}.jpg"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "image/jpeg"
        data = resp.read()
    assert data == (workflows.WORKFLOW_DIR / f"{name}.jpg").read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size == THUMBNAIL


def test_template_browser_lists_and_loads_the_workflows(server, page):
    listed = harness.list_templates(server.url)
    assert sorted(listed.get(PACK, [])) == WORKFLOWS, listed  # workflows/api/*.json are no templates

    known = harness.page_templates(page)
    assert known["loaded"] is True
    assert sorted(known["custom"].get(PACK, [])) == WORKFLOWS, known["custom"]
    assert f"extension-{PACK}" in known["categories"], known["categories"]

    res = harness.load_template(page, PACK, GRAPH_SHOT[0])
    assert res.ok, res.warnings
    assert sorted(n["type"] for n in res.nodes) == sorted(n["type"] for n in workflows.read(GRAPH_SHOT[0])["nodes"])

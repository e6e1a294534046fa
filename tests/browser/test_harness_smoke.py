"""Smoke test of the browser harness with CORE ComfyUI nodes only.

One ComfyUI server + one headless Chromium page are shared by the tests in this
module (about 15-30 s in all on 2 CPU cores):

1. a hand-written UI-format workflow EmptyImage -> PreviewImage loads like a
   drag-and-drop with no warnings, the frontend converts it to the expected
   API prompt, queues it, the server runs it successfully, screenshot taken;
2. a workflow with an unknown node type (and a model file that does not exist)
   makes the frontend report the missing node type and the missing model, the
   harness flags the impossible widget value, and queueing it is refused;
3. a tiny throw-away custom-node pack with ``example_workflows/`` is listed by
   ``GET /api/workflow_templates`` and known to the page's template browser,
   and its template loads like a click in the template browser.
"""

from __future__ import annotations

import copy
import json

import pytest

from scg_testing import browser as harness

pytestmark = pytest.mark.browser

PACK_NAME = "scg_smoke_pack"
TEMPLATE_NAME = "scg_smoke_tiny"
MISSING_TYPE = "SCGDefinitelyNotARealNode"

# UI ("workflow") format, v0.4, written by hand: EmptyImage(64x48, red) -> PreviewImage.
TINY_WORKFLOW = {
    "last_node_id": 2,
    "last_link_id": 1,
    "nodes": [
        {
            "id": 1,
            "type": "EmptyImage",
            "pos": [100, 100],
            "size": [315, 130],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
            "properties": {"Node name for S&R": "EmptyImage"},
            "widgets_values": [64, 48, 1, 0xFF0000],
        },
        {
            "id": 2,
            "type": "PreviewImage",
            "pos": [500, 100],
            "size": [210, 246],
            "flags": {},
            "order": 1,
            "mode": 0,
            "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
            "outputs": [],
            "properties": {"Node name for S&R": "PreviewImage"},
            "widgets_values": [],
        },
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
}

EXPECTED_PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0xFF0000}},
    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}


def _broken_workflow() -> dict:
    wf = copy.deepcopy(TINY_WORKFLOW)
    wf["nodes"][0]["type"] = MISSING_TYPE
    wf["nodes"].append(
        {
            "id": 3,
            "type": "CheckpointLoaderSimple",
            "pos": [100, 400],
            "size": [315, 98],
            "flags": {},
            "order": 2,
            "mode": 0,
            "inputs": [],
            "outputs": [
                {"name": "MODEL", "type": "MODEL", "links": None},
                {"name": "CLIP", "type": "CLIP", "links": None},
                {"name": "VAE", "type": "VAE", "links": None},
            ],
            "properties": {
                "Node name for S&R": "CheckpointLoaderSimple",
                # the frontend only checks models that carry a url or hash
                "models": [
                    {
                        "name": "scg_not_there.safetensors",
                        "url": "https://huggingface.co/none/none/resolve/main/scg_not_there.safetensors",
                        "directory": "checkpoints",
                    }
                ],
            },
            "widgets_values": ["scg_not_there.safetensors"],
        }
    )
    wf["last_node_id"] = 3
    return wf


@pytest.fixture(scope="module")
def smoke_pack(tmp_path_factory):
    """A throw-away custom-node pack: no nodes, one template in example_workflows/."""
    pack = tmp_path_factory.mktemp("pack") / PACK_NAME
    (pack / "example_workflows").mkdir(parents=True)
    (pack / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\nNODE_DISPLAY_NAME_MAPPINGS = {}\n")
    (pack / "example_workflows" / f"{TEMPLATE_NAME}.json").write_text(json.dumps(TINY_WORKFLOW, indent=1))
    return pack


@pytest.fixture(scope="module")
def server(smoke_pack, tmp_path_factory):
    with harness.comfyui_server(tmp_path_factory.mktemp("comfy"), packs={PACK_NAME: smoke_pack}) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with harness.chromium_page(server.url, tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def test_core_workflow_loads_converts_queues_and_runs(server, page, tmp_path):
    res = harness.load_workflow(page, TINY_WORKFLOW, filename="scg_smoke_tiny.json")
    assert res.error is None
    assert res.missing_types == []
    assert res.missing_nodes_reported == []
    assert res.ok, res.warnings
    # widgets_values landed in the right widgets
    assert res.node(1)["widgets"] == {"width": 64, "height": 48, "batch_size": 1, "color": 0xFF0000}
    assert {n["type"] for n in res.nodes} == {"EmptyImage", "PreviewImage"}

    prompt = harness.graph_to_prompt(page)
    stripped = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    assert stripped == EXPECTED_PROMPT

    q = harness.queue_current_graph(page)
    assert q.ok, q
    assert q.new_dialogs == []

    entry = harness.wait_for_prompt(server.url, q.prompt_id, timeout=30)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert not harness.prompt_error_messages(entry)
    images = entry["outputs"]["2"]["images"]
    assert len(images) == 1 and images[0]["type"] == "temp"
    # the preview was written inside the test's temp dir, not into the ComfyUI checkout
    assert (server.base_dir / "temp" / images[0]["subfolder"] / images[0]["filename"]).is_file()

    shot = harness.screenshot(page, tmp_path / "core_workflow.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 5000


def test_missing_node_type_and_model_are_reported(page):
    res = harness.load_workflow(page, _broken_workflow(), filename="broken.json")
    try:
        assert res.error is None
        assert res.missing_types == [MISSING_TYPE]
        # the call that shows the user the missing nodes (a dialog in older frontends, an overlay in newer)
        assert res.missing_nodes_reported == [[MISSING_TYPE]]
        assert [m["name"] for m in res.missing_models] == ["scg_not_there.safetensors"]
        # the frontend loads a combo value that is not in its list silently; the harness flags it
        assert [(p["type"], p["widget"], p["problem"]) for p in res.widget_problems] == [
            ("CheckpointLoaderSimple", "ckpt_name", "not in list")
        ]
        assert not res.ok
        assert any(MISSING_TYPE in w for w in res.warnings)
    finally:
        harness.close_dialogs(page)
    assert harness.open_dialogs(page) == []

    # queueing it is refused by the server; the frontend shows the error
    q = harness.queue_current_graph(page)
    try:
        assert not q.ok and q.prompt_id is None
        refused = ("invalid_prompt", "prompt_outputs_failed_validation", "missing_node_type")
        assert q.error and q.error["response"]["error"]["type"] in refused
        assert q.error_shown, q.raw
    finally:
        harness.close_dialogs(page)


def test_pack_templates_are_listed_and_load(server, page):
    assert harness.list_templates(server.url) == {PACK_NAME: [TEMPLATE_NAME]}

    known = harness.page_templates(page)
    assert known["loaded"] is True
    assert known["custom"] == {PACK_NAME: [TEMPLATE_NAME]}
    assert f"extension-{PACK_NAME}" in known["categories"]

    res = harness.load_template(page, PACK_NAME, TEMPLATE_NAME)
    assert res.ok, res.warnings
    assert {n["type"] for n in res.nodes} == {"EmptyImage", "PreviewImage"}

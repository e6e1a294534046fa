"""A shipped workflow on a ComfyUI where the pack did not load (a failed install: the README's "nodes are
missing" error).

The frontend names every SCG node type of the workflow as missing, and Run is refused and the refusal shown.
This is what a user with a broken install sees, and the counterpart of ``test_workflows.py``, whose "no missing
node type" checks would pass vacuously if the page's missing-node report were never seen.
"""
from __future__ import annotations

import pytest

from scg_testing import browser as harness
from scg_testing import workflows

pytestmark = pytest.mark.browser

WORKFLOW = "SCG hypercolumn preview"  # needs no SD1.5 weights: the pack's nodes are all that is missing
#: the pack's node types (nodes/__init__.py registers them)
SCG_TYPES = {"LoadSCGAutoencoder", "LoadSCGControlNet", "HypercolumnExtract", "SCGControlApply"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with harness.comfyui_server(tmp_path_factory.mktemp("no_pack"), packs={}) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with harness.chromium_page(server.url, tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def test_the_host_runs_without_the_pack(server):
    assert not SCG_TYPES & set(harness.object_info(server.url))


def test_missing_scg_nodes_are_named_and_run_is_refused(page):
    workflow = workflows.read(WORKFLOW)
    ours = {n["type"] for n in workflow["nodes"]} & SCG_TYPES
    assert ours, "the workflow holds no SCG node"
    res = harness.load_workflow(page, workflow, filename=f"{WORKFLOW}.json")
    try:
        assert res.error is None
        assert set(res.missing_types) == ours, res.missing_types
        # the call that shows the user the missing nodes (a dialog in older frontends, an overlay in newer)
        assert len(res.missing_nodes_reported) == 1 and set(res.missing_nodes_reported[0]) == ours, \
            res.missing_nodes_reported
        assert not res.ok
    finally:
        harness.close_dialogs(page)

    q = harness.queue_current_graph(page)
    try:
        assert not q.ok and q.prompt_id is None
        refused = ("invalid_prompt", "prompt_outputs_failed_validation", "missing_node_type")
        assert q.error and q.error["response"]["error"]["type"] in refused, q.error
        assert q.error_shown, q.raw
    finally:
        harness.close_dialogs(page)

"""The templates on a FRESH host, the first time: nothing copied, downloaded or configured by hand.

ComfyUI starts with empty models/input/output/user folders of its own (``--base-directory`` in a temp dir) and
this repository in ``custom_nodes/``. Then, as a new user would:

* the extension's first load made ``models/scg`` and put the example images (the photo and its sketch, ink,
  hazy and dark renderings) into the input folder;
* the template browser shows every workflow with its title and thumbnail, under "Extensions" in the entry named
  after the pack's folder (what the README tells users to look for);
* each template loads like a click in the template browser, and its first Run works: the hypercolumn preview
  runs to the end with the shipped autoencoder; the SD1.5 templates are refused only in their loaders, for
  the SD1.5 weights no fresh host has (the frontend names them, with their download links), and whatever
  needs no SD1.5 weights (the Canny preview) runs;
* docs/http.md (queueing a workflow over HTTP) works as written against this host: the script saves
  each image under its node's title, and prints just the error (node, input, message) when a workflow is
  refused or fails.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from scg_testing import browser as harness
from scg_testing import workflows

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
#: the folder ``git clone`` of the README's install makes, and so the name the template browser lists the pack under
PACK = "scg-pattern-completion"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with harness.comfyui_server(tmp_path_factory.mktemp("fresh"), packs={PACK: ROOT}) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with harness.chromium_page(server.url, tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def test_first_load_made_the_model_folder_and_the_example_images(server):
    assert (server.models_dir / "scg").is_dir()
    examples = sorted(workflows.WORKFLOW_DIR.glob("scg_example*.jpg"))
    assert [p.name for p in examples] == ["scg_example.jpg"] + [f"scg_example_{k}.jpg" for k in
                                                               ("dark", "hazy", "ink", "sketch")]
    offered = harness.object_info(server.url)["LoadImage"]["input"]["required"]["image"][0]
    for example in examples:
        assert (server.input_dir / example.name).read_bytes() == example.read_bytes()
        assert example.name in offered
    # every image a template loads is one of them
    used = {n["widgets_values"][0] for name in workflows.names() for n in workflows.read(name)["nodes"]
            if n["type"] == "LoadImage"}
    assert used <= {p.name for p in examples} and len(used) == len(examples)


def test_template_browser_shows_every_workflow_with_title_and_thumbnail(server, page):
    names = workflows.names()
    assert sorted(harness.list_templates(server.url)[PACK]) == names
    known = harness.page_templates(page)
    assert sorted(known["custom"][PACK]) == names
    # where the README sends users: the entry named after the pack's folder, under the heading "Extensions"
    assert PACK in known["groups"].get("Extensions", []), known["groups"]
    # what the user sees in the template browser: a card per workflow, its title, its thumbnail loaded
    shown = harness.run_js(page, "template_browser", PACK, names, harness.TEMPLATES_DIALOG_KEY)
    assert sorted(shown["titles"]) == names, shown
    assert shown["thumbs"] == {name: [512, 384] for name in names}, shown
    assert harness.open_dialogs(page) == []


@pytest.mark.parametrize("name", workflows.names())
def test_template_runs_the_first_time(name, server, page):
    workflow = workflows.read(name)
    loaders = {str(n["id"]): n for n in workflow["nodes"] if n["type"] in workflows.SD15_LOADERS}
    res = harness.load_template(page, PACK, name)
    assert res.error is None and res.missing_types == [], res.warnings
    # the only values a fresh host lacks are the SD1.5 weights' names in their loaders
    assert {(p["node"], p["problem"]) for p in res.widget_problems} == {(i, "not in list") for i in loaders}
    # the frontend names the missing weights: at least those the workflow gives download links for (newer
    # frontends also the others), never anything but the loaders' files
    with_url = {m["name"] for n in loaders.values() for m in n.get("properties", {}).get("models", []) if "url" in m}
    reported = {m["name"] for m in res.missing_models}
    assert with_url <= reported <= {n["widgets_values"][0] for n in loaders.values()}, reported

    q = harness.queue_current_graph(page)
    try:
        answer = q.response or q.error["response"]
        # refused only in the SD1.5 loaders, for their missing weights
        assert set(answer["node_errors"]) == set(loaders), answer
        assert {e["type"] for v in answer["node_errors"].values() for e in v["errors"]} <= {"value_not_in_list"}
        if loaders:
            assert not q.ok and q.error_shown
        else:
            assert q.ok, (q.error, q.node_errors)
        if q.prompt_id:  # every output that needs no SD1.5 weights runs (all of the hypercolumn preview)
            entry = harness.wait_for_prompt(server.url, q.prompt_id, timeout=150)
            assert entry["status"]["status_str"] == "success", entry["status"]
            previews = [i for i, out in entry["outputs"].items() if out.get("images")]
            assert harness.previews(page, previews)
        assert q.prompt_id or loaders
    finally:
        harness.close_dialogs(page)


def _queue(path, server, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/queue_workflow.py", str(path), "--server", server.url,
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _without_scg_metadata(workflow: dict) -> dict:
    workflow = json.loads(json.dumps(workflow))
    for node in workflow["nodes"]:
        if node["type"] == "LoadSCGControlNet":
            node["properties"].pop("models", None)
    return workflow


def _rows(panel: str) -> dict[str, str]:
    """file -> folder, from the missing-models panel's text (each file's line is followed by its folder's)."""
    lines = [line.strip() for line in panel.splitlines() if line.strip()]
    return {line: lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith((".ckpt", ".safetensors"))}


@pytest.mark.parametrize("name", [n for n in workflows.names() if "(SD1.5)" in n])
def test_missing_models_are_named_with_their_folders(name, server, page):
    """What the frontend shows when a template's files are missing. Frontend 1.58 lists every missing file
    in its errors panel with its folder: the SCG ControlNets too (from ``properties.models``: ``controlnet``,
    not "Unknown"). Frontend 1.35 opens a dialog listing "folder / file" for each (it needs a URL in each entry:
    the SCG ControlNets' is the authors' repository, from which it offers no download)."""
    workflow = workflows.read(name)
    loaders = [(n["widgets_values"][0], workflows.SD15_LOADERS[n["type"]], n) for n in workflow["nodes"]
               if n["type"] in workflows.SD15_LOADERS]
    harness.load_template(page, PACK, name)
    try:
        shown = harness.run_js(page, "missing_models_report", 10_000)
    finally:
        harness.close_dialogs(page)
    if shown["panel"] is not None:  # 1.58: every file, each with its folder
        assert _rows(shown["panel"]) == {file: folder for file, folder, _ in loaders}, shown["panel"]
        assert "Unknown" not in shown["panel"]
        # the control: without the templates' metadata the same panel cannot tell the SCG files' folder
        harness.load_workflow(page, _without_scg_metadata(workflow), filename=f"{name}.json")
        try:
            bare = harness.run_js(page, "missing_models_report", 10_000)
        finally:
            harness.close_dialogs(page)
        scg = {file for file, _, n in loaders if n["type"] == "LoadSCGControlNet"}
        assert scg and {f: d for f, d in _rows(bare["panel"]).items() if f in scg} == dict.fromkeys(scg, "Unknown")
    else:  # 1.35: the dialog lists "folder / file" for each
        assert shown["dialog"] is not None, shown
        listed = {line.strip() for line in shown["dialog"].splitlines() if " / " in line}
        assert listed == {f"{folder} / {file}" for file, folder, _ in loaders}, shown["dialog"]


def test_docs_http_queues_a_workflow_over_http(server, tmp_path):
    page = (ROOT / "docs" / "http.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"```(\w+)\n(.*?)```", page, re.S))
    script = ROOT / "scripts" / "queue_workflow.py"
    assert blocks["python"] in script.read_text(encoding="utf-8")  # the page shows the script's own code
    command = shlex.split(blocks["bash"])
    assert command[:2] == ["python", "scripts/queue_workflow.py"], command
    # the page's command, with this host's address and a temp folder (later options win)
    done = subprocess.run([sys.executable, *command[1:], "--server", server.url, "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    saved = [Path(line) for line in done.stdout.splitlines()]
    prompt = json.loads((ROOT / command[2]).read_text(encoding="utf-8"))
    previews = [k for k, v in prompt.items() if v["class_type"] == "PreviewImage"]
    assert len(saved) == len(previews) >= 4
    assert all(p.parent == tmp_path and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in saved), saved
    # each file is named after its node: "All groups of the autoencoder.png", "Preview_ colour x2.png", ...
    titles = {prompt[k]["_meta"]["title"] for k in previews}
    assert "All groups of the autoencoder" in titles and "Preview: colour x2" in titles
    assert sorted(p.name for p in saved) == sorted(re.sub("[^A-Za-z0-9 ._,+()-]+", "_", t) + ".png" for t in titles)
    # and holds that node's image: the sheet of every group is the largest
    from PIL import Image

    sizes = {p.stem: Image.open(p).size for p in saved}
    assert max(sizes, key=lambda k: sizes[k][0] * sizes[k][1]) == "All groups of the autoencoder", sizes


def test_queue_script_reports_a_refused_workflow(server, tmp_path):
    prompt = workflows.to_api(workflows.read("SCG text to image (SD1.5)"), harness.object_info(server.url))
    path = tmp_path / "refused.json"
    path.write_text(json.dumps(prompt))
    done = _queue(path, server, tmp_path)
    assert done.returncode == 1 and done.stdout == "", done.stdout
    lines = done.stderr.splitlines()
    assert lines[0] == "ComfyUI refused the workflow (HTTP 400): Prompt outputs failed validation", lines
    # one line per missing file: the loader node, its input, and the message naming the file
    loaders = {k: v for k, v in prompt.items() if v["class_type"] in workflows.SD15_LOADERS}
    assert len(lines) == 1 + len(loaders), lines
    for node_id, node in loaders.items():
        name, value = next(iter(node["inputs"].items()))
        line = next(x for x in lines if x.startswith(f"  node {node_id} "))
        assert f"({node['class_type']}), input '{name}': " in line and repr(value) in line, line
    # just the error: not the raw answer (no JSON, no option lists, no dependent outputs)
    assert "{" not in done.stderr and "input_config" not in done.stderr and "dependent_outputs" not in done.stderr


def test_queue_script_reports_a_failed_run(server, tmp_path):
    """A workflow the server accepts but a node fails to run: the node, its error type and message; no
    traceback."""
    (server.input_dir / "scg_broken.jpg").write_bytes(b"not a JPEG at all")
    try:
        prompt = workflows.to_api(workflows.read("SCG hypercolumn preview"), harness.object_info(server.url))
        loader = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
        prompt[loader]["inputs"]["image"] = "scg_broken.jpg"
        path = tmp_path / "failing.json"
        path.write_text(json.dumps(prompt))
        done = _queue(path, server, tmp_path)
    finally:
        (server.input_dir / "scg_broken.jpg").unlink()
    assert done.returncode == 1 and done.stdout == "", done.stdout
    assert done.stderr.startswith(f"the workflow failed: node {loader} "), done.stderr
    assert "(LoadImage) failed: UnidentifiedImageError: " in done.stderr and "scg_broken.jpg" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr

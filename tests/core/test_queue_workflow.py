"""scripts/queue_workflow.py without a server: file names from node titles, and the errors it prints.

The messages are ComfyUI's own formats (``POST /prompt``'s 400 body, a history entry's status messages); the
browser tier runs the script against a real server (tests/browser/test_first_run.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("queue_workflow", ROOT / "scripts" / "queue_workflow.py")
qw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qw)

PROMPT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "x.jpg"}, "_meta": {"title": "Load Image"}},
    "5": {"class_type": "LoadSCGControlNet", "inputs": {"control_net_name": "a.ckpt"},
          "_meta": {"title": "LoadSCGControlNet"}},
    "7": {"class_type": "PreviewImage", "inputs": {}, "_meta": {"title": "HC0+HC1, colour x2"}},
    "8": {"class_type": "PreviewImage", "inputs": {}, "_meta": {"title": "Preview"}},
    "9": {"class_type": "PreviewImage", "inputs": {}, "_meta": {"title": "Preview"}},
    "10": {"class_type": "SaveImage", "inputs": {}, "_meta": {"title": "../../etc/passwd: a/b\\c*?"}},
}


def image(name: str) -> dict:
    return {"filename": name, "subfolder": "", "type": "temp"}


@pytest.mark.parametrize("title, stem", [
    ("HC0+HC1, colour x2", "HC0+HC1, colour x2"),
    ("Every group (grid)", "Every group (grid)"),
    ("../../etc/passwd", "_etc_passwd"),
    ("a..b", "a_b"),
    ("a/b\\c:d*e?f\"g<h>i|j", "a_b_c_d_e_f_g_h_i_j"),
    ("  .hidden. ", "hidden"),
    ("CON", "_CON"),
    ("nul.txt", "_nul.txt"),
    ("\u00e9t\u00e9 \u00d7 2", "_t_ _ 2"),
    ("", "output"),
    ("...", "output"),
])
def test_safe_name(title, stem):
    assert qw.safe_name(title) == stem


@given(st.text(max_size=300))
def test_safe_name_is_always_a_plain_file_name(title):
    stem = qw.safe_name(title)
    assert 0 < len(stem) <= 80 and stem.isascii()
    assert "/" not in stem and "\\" not in stem and stem not in (".", "..")
    assert stem == stem.strip(" .") or stem.startswith("_")
    assert set(stem) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ._,+()-")


def test_output_files_are_named_after_their_nodes(tmp_path):
    outputs = {
        "7": {"images": [image("ComfyUI_temp_abcd_00001_.png")]},
        "8": {"images": [image("ComfyUI_temp_abcd_00002_.png")]},
        "9": {"images": [image("ComfyUI_temp_abcd_00003_.png"), image("ComfyUI_temp_abcd_00004_.PNG")]},
        "10": {"images": [image("SCG_00001_.webp")]},
        "11": {"text": ["not an image"]},
    }
    named = qw.named_outputs(outputs, PROMPT, tmp_path)
    assert [p.name for p, _ in named] == ["HC0+HC1, colour x2.png", "Preview_8.png", "Preview_9_1.png",
                                          "Preview_9_2.png", "_etc_passwd_ a_b_c_.webp"]
    assert [i["filename"] for _, i in named] == [i["filename"] for o in outputs.values() for i in o.get("images", [])]
    assert all(p.parent == tmp_path for p, _ in named)  # nothing outside the folder, whatever the title


REFUSED = {
    "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
              "details": "", "extra_info": {}},
    "node_errors": {"5": {"errors": [{
        "type": "value_not_in_list", "message": "Value not in list",
        "details": "control_net_name: 'a.ckpt' not in []",
        "extra_info": {"input_name": "control_net_name", "input_config": [[], {"tooltip": "x" * 500}],
                       "received_value": "a.ckpt"}}],
        "dependent_outputs": ["7"], "class_type": "LoadSCGControlNet"}},
}


def test_a_refusal_prints_node_input_and_message():
    import json

    text = qw.refusal_error(json.dumps(REFUSED), PROMPT)
    assert text.splitlines() == [
        "Prompt outputs failed validation",
        "  node 5 (LoadSCGControlNet), input 'control_net_name': Value not in list: "
        "control_net_name: 'a.ckpt' not in []"]
    # a prompt-level error with no node errors, and a body that is no JSON
    body = {"error": {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the "
                      "class_type property.", "details": "Node ID '#3'", "extra_info": {}}, "node_errors": {}}
    assert qw.refusal_error(json.dumps(body), PROMPT) == ("Cannot execute because a node is missing the class_type "
                                                          "property.: Node ID '#3'")
    assert qw.refusal_error("<html>Bad gateway</html>\n", PROMPT) == "<html>Bad gateway</html>"


def test_a_failed_run_prints_the_node_and_its_error_without_the_traceback():
    messages = [
        ["execution_start", {"prompt_id": "p"}],
        ["execution_cached", {"nodes": [], "prompt_id": "p"}],
        ["execution_error", {
            "prompt_id": "p", "node_id": "1", "node_type": "LoadImage", "executed": [],
            "exception_message": "cannot identify image file '/x/broken.jpg'\n",
            "exception_type": "PIL.UnidentifiedImageError",
            "traceback": ["Traceback (most recent call last):\n", "  File ..."],
            "current_inputs": {"image": ["broken.jpg"]}, "current_outputs": []}],
    ]
    assert qw.run_error(messages, PROMPT) == ("node 1 'Load Image' (LoadImage) failed: UnidentifiedImageError: "
                                              "cannot identify image file '/x/broken.jpg'")
    pack_error = "custom_nodes.scg-comfy.scg_models.errors.SCGError"  # how 0.8/0.33 spell a pack's exception
    messages[-1][1].update(exception_type=pack_error, exception_message="modules: unknown group 'HC99'")
    assert qw.run_error(messages, PROMPT).endswith("failed: SCGError: modules: unknown group 'HC99'")
    interrupted = [["execution_interrupted", {"prompt_id": "p", "node_id": "7", "node_type": "PreviewImage"}]]
    assert qw.run_error(interrupted, PROMPT) == "interrupted at node 7 'HC0+HC1, colour x2' (PreviewImage)"

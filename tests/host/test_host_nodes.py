"""The nodes as the host serves them (/object_info): ids, descriptions, tooltips, how their types connect to
core's nodes, and the README's node list (ids, display names, categories, every input and output) against it."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"

NODE_IDS = ["LoadSCGAutoencoder", "LoadSCGControlNet", "HypercolumnExtract", "SCGControlApply"]
CORE_APPLY_INPUTS = ["positive", "negative", "control_net", "image", "strength", "start_percent", "end_percent"]


@pytest.fixture(scope="module")
def info(host):
    return {n: host.nodes.NODE_CLASS_MAPPINGS[n].GET_NODE_INFO_V1() for n in NODE_IDS}


def test_registered_by_the_hosts_loader(host, info):
    for node_id in NODE_IDS:
        assert node_id in host.nodes.NODE_CLASS_MAPPINGS
        assert info[node_id]["name"] == node_id
        assert host.nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == info[node_id]["display_name"]
        assert info[node_id]["python_module"].startswith("custom_nodes.")
    assert str(host.root) in host.nodes.LOADED_MODULE_DIRS.values()


def readme_nodes() -> dict[str, tuple[str, str, str]]:
    """The README's "The nodes" section: node id -> (display name, category, the text of its subsection).

    Each node's subsection is headed with its display name; its first line reads "`NodeId`, in `category`"."""
    section = README.read_text(encoding="utf-8").split("\n## The nodes\n", 1)[1].split("\n## ", 1)[0]
    found = {}
    for part in section.split("\n### ")[1:]:
        heading, _, text = part.partition("\n")
        if m := re.match(r"\s*`(\w+)`, in `([\w/]+)`", text):
            found[m[1]] = (heading.strip(), m[2], text)
    return found


def test_the_readme_lists_every_node_input_and_output_as_served(info):
    """Each node has its subsection, headed with its display name, id and category, and every input and output
    the host serves is named in it (a new input without a line in the README fails here)."""
    listed = readme_nodes()
    assert sorted(listed) == sorted(NODE_IDS), sorted(listed)
    for node_id, (display, category, text) in listed.items():
        assert (display, category) == (info[node_id]["display_name"], info[node_id]["category"]), node_id
        named = set(re.findall(r"`(\w+)`", text))
        inputs = [n for section in ("required", "optional") for n in info[node_id]["input"].get(section, {})]
        missing = [n for n in inputs + info[node_id]["output_name"] if n not in named]
        assert not missing, f"README, {display}: no line names {missing}"


def test_every_node_has_a_description_and_every_input_a_tooltip(info):
    for node_id, node_info in info.items():
        assert len(node_info["description"]) > 40, node_id
        for section in ("required", "optional"):
            for name, entry in node_info["input"].get(section, {}).items():
                assert entry[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(node_info["output_tooltips"]), node_id


def test_apply_has_core_apply_controlnets_interface(host, info):
    ours = info["SCGControlApply"]
    core = host.nodes.NODE_CLASS_MAPPINGS["ControlNetApplyAdvanced"].INPUT_TYPES()
    assert ours["input_order"]["required"][:7] == CORE_APPLY_INPUTS
    for name in CORE_APPLY_INPUTS:
        ours_entry, core_entry = ours["input"]["required"][name], core["required"][name]
        assert ours_entry[0] == core_entry[0]
        for key in ("default", "min", "max", "step"):
            assert ours_entry[1].get(key) == (core_entry[1] if len(core_entry) > 1 else {}).get(key), (name, key)
    assert ours["input_order"]["optional"] == ["vae"]
    assert ours["input"]["required"]["scg_autoencoder"][0] == "SCG_AUTOENCODER"
    assert ours["output"] == ["CONDITIONING", "CONDITIONING"] and ours["output_name"] == ["positive", "negative"]


def test_types_connect(host, info):
    """Both loaders' autoencoder feeds both other nodes; the ControlNet and the hint image feed core's nodes."""
    def output_type(node_id, name):
        return info[node_id]["output"][info[node_id]["output_name"].index(name)]

    def input_type(spec, name):  # spec: INPUT_TYPES() or /object_info's "input"
        return {**spec.get("optional", {}), **spec["required"]}[name][0]

    core = {n: host.nodes.NODE_CLASS_MAPPINGS[n].INPUT_TYPES() for n in ("ControlNetApplyAdvanced", "PreviewImage")}
    for loader in ("LoadSCGAutoencoder", "LoadSCGControlNet"):
        for user in ("HypercolumnExtract", "SCGControlApply"):
            assert output_type(loader, "scg_autoencoder") == input_type(info[user]["input"], "scg_autoencoder")
    assert output_type("LoadSCGControlNet", "control_net") == input_type(core["ControlNetApplyAdvanced"], "control_net")
    for name in ("hint", "preview", "grid"):
        assert output_type("HypercolumnExtract", name) == input_type(core["PreviewImage"], "images")
    assert output_type("HypercolumnExtract", "hint") == input_type(core["ControlNetApplyAdvanced"], "image")

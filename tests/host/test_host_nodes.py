"""The nodes as the host serves them (/object_info): ids, categories, descriptions, tooltips, types."""
import pytest

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


def test_categories(info):
    assert info["LoadSCGAutoencoder"]["category"] == info["LoadSCGControlNet"]["category"] == "loaders/SCG"
    assert info["HypercolumnExtract"]["category"] == info["SCGControlApply"]["category"] == "conditioning/controlnet/SCG"


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


def test_types_connect(info):
    assert info["LoadSCGAutoencoder"]["output"] == ["SCG_AUTOENCODER"]
    assert info["LoadSCGControlNet"]["output"] == ["CONTROL_NET", "SCG_AUTOENCODER"]
    assert info["HypercolumnExtract"]["output"] == ["IMAGE", "IMAGE", "IMAGE"]
    assert info["HypercolumnExtract"]["output_name"] == ["hint", "preview", "grid"]
    assert info["HypercolumnExtract"]["input"]["required"]["scg_autoencoder"][0] == "SCG_AUTOENCODER"

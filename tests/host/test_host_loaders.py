"""LoadSCGAutoencoder and LoadSCGControlNet on real files, and core's ControlNetLoader on a converted one."""
import os
import time

import comfy.controlnet
import pytest
import torch

from scg_models import formats, save_autoencoder
from scg_testing.host import SDXL_CONTROLNET, authors_controlnet_ckpt, random_ae, run_node, save_authors_pth


@pytest.fixture(scope="module")
def ae():
    return random_ae(seed=5)


@pytest.fixture(scope="module")
def authors_ckpt(host, ae):
    """A full-size SD1.5 SCG ControlNet in the authors' Lightning layout, in models/controlnet."""
    path = host.dirs.models["controlnet"] / "0_epoch=10-step=325291.ckpt"
    expected = authors_controlnet_ckpt(path, ae)
    yield path, expected
    path.unlink()


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loaders_are_registered_with_their_folders(host, node):
    paths = host.folder_paths.get_folder_paths("scg")
    assert os.path.join(host.folder_paths.models_dir, "scg") in paths
    assert str(host.dirs.models["scg"]) in paths
    (host.dirs.models["scg"] / "listed.safetensors").write_bytes(b"")
    (host.dirs.models["controlnet"] / "listed.ckpt").write_bytes(b"")
    try:  # the dropdowns list the folders' files, fresh at every schema request
        ae_in = node("LoadSCGAutoencoder").INPUT_TYPES()["required"]["autoencoder_name"]
        cn_in = node("LoadSCGControlNet").INPUT_TYPES()["required"]["control_net_name"]
        assert ae_in[0] == "COMBO" and "listed.safetensors" in ae_in[1]["options"]
        assert ae_in[1]["default"] == "scg_default.safetensors" in ae_in[1]["options"]  # shipped, offered first
        assert cn_in[0] == "COMBO" and "listed.ckpt" in cn_in[1]["options"]
    finally:
        (host.dirs.models["scg"] / "listed.safetensors").unlink()
        (host.dirs.models["controlnet"] / "listed.ckpt").unlink()


def test_register_keeps_yaml_paths(host, tmp_path):
    fp = host.folder_paths
    saved = fp.folder_names_and_paths.pop("scg")
    try:
        yaml_dir = str(tmp_path / "from_yaml")
        fp.add_model_folder_path("scg", yaml_dir)  # what extra_model_paths.yaml does before packs load
        host.pack.nodes.common.register_model_folder()
        host.pack.nodes.common.register_model_folder()  # idempotent
        shipped = host.pack.nodes.common.SHIPPED_DIR
        paths = fp.get_folder_paths("scg")
        assert paths == [yaml_dir, os.path.join(fp.models_dir, "scg"), shipped]
        fp.folder_names_and_paths.pop("scg")
        host.pack.nodes.common.register_model_folder()
        assert fp.get_folder_paths("scg") == [os.path.join(fp.models_dir, "scg"), shipped]
        assert ".safetensors" in fp.folder_names_and_paths["scg"][1]
    finally:
        fp.folder_names_and_paths["scg"] = saved


@pytest.mark.parametrize("kind", ["safetensors", "pth"])
def test_load_autoencoder_files(host, node, ae, kind):
    name = f"scg_test.{kind}"
    path = host.dirs.models["scg"] / name
    save_autoencoder(ae, path) if kind == "safetensors" else save_authors_pth(ae, path)
    try:
        assert name in host.folder_paths.get_filename_list("scg")
        (loaded,) = run_node(node("LoadSCGAutoencoder"), autoencoder_name=name)
        assert same_weights(loaded.ae, ae) and list(loaded.ae.groups) == list(ae.groups)
        assert loaded.patcher() is loaded.patcher()  # one ModelPatcher per dtype, made once
    finally:
        path.unlink()


def test_autoencoder_reloads_when_the_file_changes(host, node, ae):
    cls = node("LoadSCGAutoencoder")
    path = host.dirs.models["scg"] / "retrained.safetensors"
    save_autoencoder(ae, path)
    try:
        before = cls.fingerprint_inputs(autoencoder_name="retrained.safetensors")
        assert before == cls.fingerprint_inputs(autoencoder_name="retrained.safetensors")
        time.sleep(0.01)
        save_autoencoder(random_ae(seed=99), path)
        assert cls.fingerprint_inputs(autoencoder_name="retrained.safetensors") != before
    finally:
        path.unlink()


def test_load_scg_controlnet_from_the_authors_ckpt(host, node, ae, authors_ckpt):
    path, expected = authors_ckpt
    control_net, scg_ae = run_node(node("LoadSCGControlNet"), control_net_name=path.name)
    assert type(control_net) is comfy.controlnet.ControlNet  # core's object, built by core's loader
    adapter = control_net.control_model  # in front of core's control model: takes HypercolumnExtract's hint
    assert isinstance(adapter, host.pack.nodes.scg_controlnet.HintAdapter) and adapter.encoded
    assert adapter.geometry.hint_size(512, 512) == (509, 509)
    assert control_net.control_model_wrapped.model is adapter.control_model  # what ComfyUI loads and offloads
    sd = adapter.control_model.state_dict()
    assert sd.keys() == expected.keys()
    for k in ("input_hint_block.0.weight", "input_hint_block.14.bias", "zero_convs.11.0.weight",
              "middle_block_out.0.weight", "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"):
        assert torch.equal(sd[k].float(), expected[k].float()), k
    assert adapter.control_model.input_hint_block[0].in_channels == 3
    assert same_weights(scg_ae.ae, ae)


def test_autoencoder_loader_takes_the_ckpt_autoencoder(host, node, ae, authors_ckpt):
    path, _ = authors_ckpt
    link = host.dirs.models["scg"] / path.name
    os.symlink(path, link)
    try:
        (loaded,) = run_node(node("LoadSCGAutoencoder"), autoencoder_name=path.name)
        assert same_weights(loaded.ae, ae)
    finally:
        link.unlink()


def test_converted_file_loads_in_core_controlnet_loader(host, node, ae, authors_ckpt, caplog):
    path, expected = authors_ckpt
    converted = host.dirs.models["controlnet"] / "scg_hc0_converted.safetensors"
    formats.save_controlnet(formats.load_controlnet_file(path), converted, dtype=torch.float16)
    try:
        with caplog.at_level("WARNING"):
            (core_cn,) = run_node(node("ControlNetLoader"), control_net_name=converted.name)
        assert "missing controlnet keys" not in caplog.text
        assert type(core_cn) is comfy.controlnet.ControlNet
        sd = core_cn.control_model.state_dict()
        assert sd.keys() == expected.keys()  # the scg_autoencoder.* keys were ignored, nothing missing
        assert torch.equal(sd["input_hint_block.0.weight"].half(), expected["input_hint_block.0.weight"].half())
        control_net, scg_ae = run_node(node("LoadSCGControlNet"), control_net_name=converted.name)
        assert same_weights(scg_ae.ae, ae)
    finally:
        converted.unlink()


def test_sdxl_controlnet_is_a_clear_error(host, node, ae):
    path = host.dirs.models["controlnet"] / "sdxl_scg.ckpt"
    authors_controlnet_ckpt(path, ae, config=SDXL_CONTROLNET, meta=True)
    try:
        with pytest.raises(ValueError, match="control_net_name: 'sdxl_scg.ckpt' is not an SD1.5 ControlNet.*SDXL"):
            run_node(node("LoadSCGControlNet"), control_net_name=path.name)
    finally:
        path.unlink()


@pytest.mark.parametrize("content,message", [
    (b"not a checkpoint at all", "control_net_name: .*unknown file format"),
    ("plain", "control_net_name: 'plain_cn.safetensors' holds no SCG autoencoder"),
    ("autoencoder", "control_net_name: 'plain_cn.safetensors' is an SCG autoencoder, not a ControlNet: move it to "
                    "models/scg and load it with 'Load SCG Autoencoder'"),
])
def test_bad_controlnet_files(host, node, ae, scg_error, content, message):
    path = host.dirs.models["controlnet"] / "plain_cn.safetensors"
    if content == "plain":
        from safetensors.torch import save_file
        save_file({"input_hint_block.0.weight": torch.zeros(16, 3, 3, 3), "zero_convs.0.0.weight": torch.zeros(1)},
                  str(path))
    elif content == "autoencoder":
        save_autoencoder(ae, path)  # an autoencoder put in the controlnet folder by mistake
    else:
        path.write_bytes(content)
    try:
        with pytest.raises(scg_error, match=message):
            run_node(node("LoadSCGControlNet"), control_net_name=path.name)
    finally:
        path.unlink()


def test_missing_file_names_the_input(node):
    with pytest.raises(ValueError, match="autoencoder_name: file 'nope.safetensors' not found"):
        run_node(node("LoadSCGAutoencoder"), autoencoder_name="nope.safetensors")


def test_the_shipped_autoencoder_loads(node):
    (loaded,) = run_node(node("LoadSCGAutoencoder"), autoencoder_name="scg_default.safetensors")
    assert loaded.ae.n_vector == 16 and {"HC0", "HC1"} <= set(loaded.ae.groups)

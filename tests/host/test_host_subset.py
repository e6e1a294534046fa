"""An any-subset SCG ControlNet, trained here with ``train.controlnet --subsets``, through Load SCG
ControlNet and Apply SCG ControlNet in a real ComfyUI sampler with three selections; and the warning
of a per-group ControlNet given another selection. Tiny SD1.5-architecture models built in the test."""
import logging

import pytest
import torch

from scg_testing import tiny_sd15
from scg_testing.core import recorded_hints
from scg_testing.host import conditioning, make_images, run_node, sample
from scg_testing.trainers import controlnet_args, run_controlnet
from scg_testing.trainers import make_images as make_image_files

#: the smallest UNet width ComfyUI's generic ControlNet loader builds (context 32)
CONFIG = tiny_sd15.unet_config(64, 32)
LATENT = torch.zeros(1, 4, 8, 8)


@pytest.fixture(scope="module")
def unet(host):
    return tiny_sd15.unet_patcher(CONFIG, seed=0)


@pytest.fixture()
def loader(host, node, monkeypatch):
    """Load SCG ControlNet as the node runs. ComfyUI's SD1.5 detection accepts only the real widths
    (320 channels), so its check is waived for these 64-channel files; everything else is the node's."""
    monkeypatch.setattr(host.pack.nodes.loaders, "check_sd15", lambda state_dict, name: None)
    return lambda name: run_node(node("LoadSCGControlNet"), control_net_name=name)


@pytest.fixture(scope="module")
def trained(host, tmp_path_factory):
    """(base, file name): a tiny SD1.5-architecture base and an any-subset ControlNet trained on it
    for 20 steps with ``train.controlnet --subsets`` (written into models/controlnet)."""
    from scg_models import ModularAutoencoder, save_autoencoder

    root = tmp_path_factory.mktemp("any_subset")
    base = tiny_sd15.build_base(seed=0)
    files = {"base": tiny_sd15.save_checkpoint(base, root / "tiny_sd15.safetensors"),
             "ae": str(root / "ae.safetensors"), "data": str(root / "data")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_autoencoder(ModularAutoencoder(), files["ae"])
    make_image_files(root / "data", 6)
    path = host.dirs.models["controlnet"] / "any_trained.safetensors"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_controlnet(controlnet_args(files, path, "--modules", "all", "--subsets", "--steps", "20",
                                                 "--lr", "1e-3", "--no-gradient-checkpointing"))
    finally:
        torch.set_num_threads(threads)
    assert summary["done"] and summary["step"] == 20
    yield base, path.name
    path.unlink()


def _apply(node, cn, scg_ae, image, modules, gains=""):
    pos, neg = conditioning()
    return run_node(node("SCGControlApply"), positive=pos, negative=neg, control_net=cn, image=image, strength=1.0,
                    start_percent=0.0, end_percent=1.0, scg_autoencoder=scg_ae, modules=modules, gains=gains)


def test_trained_any_subset_controlnet_runs_with_three_selections(node, loader, trained):
    from scg_models.subsets import presence_mask

    base, name = trained
    unet = base.patcher  # the UNet the ControlNet was trained against
    cn, scg_ae = loader(name)
    model = cn.control_model.control_model  # the ControlNet behind the loader's hint adapter
    assert model.input_hint_block[0].in_channels == 3 + 16
    ae = scg_ae.ae
    image = make_images(height=64, width=64)
    x = image.movedim(-1, 1)
    results = {}
    for modules, gains in (("HC0", ""), ("HC1", "HC1:2"), ("2,5,10", "")):
        with recorded_hints(model) as seen:
            results[modules] = sample(unet, *_apply(node, cn, scg_ae, image, modules, gains), LATENT, steps=2)
        mods = ae.resolve_modules(modules)
        want = ae.hint(x, mods, gains or None)
        assert seen and all(h.shape[1:] == (19, 61, 61) for h in seen)
        for h in seen:
            assert torch.allclose(h[0, :3], want[0], atol=1e-5)
            assert torch.equal(h[0, 3:, 10, 20], presence_mask(mods, 16))
    assert (results["HC0"] - results["HC1"]).abs().max() > 1e-4
    assert (results["HC1"] - results["2,5,10"]).abs().max() > 1e-4
    plain = sample(unet, *conditioning(), LATENT, steps=2)
    assert (results["HC0"] - plain).abs().max() > 1e-4


def test_per_group_controlnet_warns_once_for_another_selection(host, unet, node, loader, caplog):
    from scg_models import ModularAutoencoder
    from scg_models.formats import ControlNetFile, save_controlnet
    from train.sd15 import build_controlnet, init_weights

    path = host.dirs.models["controlnet"] / "hc0_tiny.safetensors"
    cm = init_weights(build_controlnet(unet.model.model_config.unet_config), 2)
    torch.manual_seed(0)
    save_controlnet(ControlNetFile(dict(cm.state_dict()), ModularAutoencoder(), {}), path,
                    info={"selection": "HC0", "modules": [0, 1, 4, 8, 9, 15]})
    try:
        cn, scg_ae = loader(path.name)
        image = make_images()
        with caplog.at_level(logging.WARNING, logger="SCG"):
            _apply(node, cn, scg_ae, image, "HC0")
            assert not [r for r in caplog.records if "trained on modules" in r.getMessage()]
            _apply(node, cn, scg_ae, image, "HC1")
            _apply(node, cn, scg_ae, image, "HC1")
        warned = [r.getMessage() for r in caplog.records if "trained on modules" in r.getMessage()]
        assert len(warned) == 1 and "[0, 1, 4, 8, 9, 15]" in warned[0] and "[2, 3]" in warned[0]
    finally:
        path.unlink()

"""Advanced-ControlNet (ACN) loaded as a second custom node pack: its ControlNets go through SCG as they are.

ACN is the folder ``$SCG_ACN_PATH`` (default: ``ComfyUI-Advanced-ControlNet`` beside the host checkouts, where
``.ci/setup-hosts.sh`` lays out 1.5.8), copied once per session; without it the module is SKIPPED, loudly
(and fails under ``CI=true``).
"""
import asyncio
import shutil
import sys

import pytest
import torch
from safetensors.torch import save_file

from scg_models.geometry import HintGeometry
from scg_testing.core import recorded_hints
from scg_testing.host import conditioning, make_images, random_ae, run_node, sample, tiny_control_model, tiny_unet
from scg_testing.hosts import acn_path

ACN_PATH = acn_path()
LATENT = torch.zeros(1, 4, 8, 8)


@pytest.fixture(scope="session")
def acn(host, tmp_path_factory):
    """ACN's node classes, loaded by the host's own custom-node loader from a fresh copy."""
    if not (ACN_PATH / "__init__.py").is_file():
        pytest.skip(f"!!! Advanced-ControlNet not found at {ACN_PATH} (set $SCG_ACN_PATH): ACN tests SKIPPED")
    dest = tmp_path_factory.mktemp("custom_nodes") / "ComfyUI-Advanced-ControlNet"
    shutil.copytree(ACN_PATH, dest)
    assert asyncio.run(host.nodes.load_custom_node(str(dest), module_parent="custom_nodes")), "ACN failed to load"
    assert "ACN_ControlNetLoaderAdvanced" in host.nodes.NODE_CLASS_MAPPINGS
    return sys.modules[str(dest).replace(".", "_x_")]


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(model_channels=64)


@pytest.fixture(scope="module")
def ae():
    return random_ae(seed=4)


@pytest.fixture(scope="module")
def cn_file(host, unet):
    """A tiny SD1.5-layout ControlNet file in models/controlnet, for ACN's loader."""
    path = host.dirs.models["controlnet"] / "tiny_acn.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_control_model(unet, seed=6, model_channels=64).state_dict().items()},
              str(path))
    yield path.name
    path.unlink()


def acn_controlnet(node, cn_file, strength=1.0, mask=None):
    """Weights, a mask and a timestep keyframe made with ACN's nodes, and ACN's loader given the keyframe."""
    weights = run_node(node("ACN_ScaledSoftControlNetWeights"), base_multiplier=0.8, uncond_multiplier=1.0)[0]
    keyframes = run_node(node("TimestepKeyframe"), start_percent=0.0, strength=strength, cn_weights=weights,
                         mask_optional=mask)[0]
    (control_net,) = run_node(node("ACN_ControlNetLoaderAdvanced"), cnet=cn_file, _tk_opt=keyframes)
    return control_net, keyframes, weights


def scg_apply(node, pos, neg, control_net, image, scg_ae):
    return run_node(node("SCGControlApply"), positive=pos, negative=neg, control_net=control_net, image=image,
                    strength=1.0, start_percent=0.0, end_percent=1.0, scg_autoencoder=scg_ae, modules="HC0", gains="")


def hints_of(control):
    """Records the hints the real control model behind ``control`` receives (a context manager)."""
    return recorded_hints(getattr(control.control_model, "control_model", control.control_model))


def test_keyframes_masks_and_weights_survive_scg_control_apply(acn, node, unet, ae, scg_ae, cn_file):
    pos, neg = conditioning()
    img = make_images()
    mask = torch.ones(1, 8, 8)
    control_net, keyframes, weights = acn_controlnet(node, cn_file, mask=mask)
    assert type(control_net).__name__ == "ControlNetAdvanced"
    p, n = scg_apply(node, pos, neg, control_net, img, scg_ae)
    control = p[0][1]["control"]
    assert type(control) is type(control_net) and control is not control_net
    assert control.timestep_keyframes is keyframes  # ACN's own copy keeps them: the same objects
    ours = keyframes.keyframes[-1]  # after ACN's default keyframe
    assert ours.control_weights is weights and ours.mask_hint_orig is mask
    assert control.control_model.control_model is control_net.control_model  # the same weights, behind SCG's stage
    with hints_of(control) as seen:
        controlled = sample(unet, p, n, LATENT, steps=2)
    assert torch.isfinite(controlled).all() and seen
    assert all(torch.equal(h[:1], ae.hint(img.movedim(-1, 1), "HC0")) for h in seen)  # exact, 61x61
    assert (controlled - sample(unet, pos, neg, LATENT, steps=2)).abs().max() > 1e-3


@pytest.mark.parametrize("strength,mask", [(0.0, torch.ones(1, 8, 8)), (1.0, torch.zeros(1, 8, 8))])
def test_acn_keyframe_strength_and_mask_act_through_scg(acn, node, unet, scg_ae, cn_file, strength, mask):
    """A keyframe of strength 0, or an all-zero mask, switch the control off: ACN's scheduling really runs."""
    pos, neg = conditioning()
    control_net = acn_controlnet(node, cn_file, strength=strength, mask=mask)[0]
    p, n = scg_apply(node, pos, neg, control_net, make_images(), scg_ae)
    assert torch.equal(sample(unet, p, n, LATENT, steps=2), sample(unet, pos, neg, LATENT, steps=2))


def test_hypercolumn_extract_in_acn_apply_is_not_stretched(acn, host, node, unet, ae, scg_ae, cn_file):
    """HypercolumnExtract's hint at the generation size goes through Apply Advanced ControlNet unchanged."""
    pos, neg = conditioning()
    img = make_images(height=64, width=64)
    hint = run_node(node("HypercolumnExtract"), image=img, scg_autoencoder=scg_ae, modules="HC0", gains="",
                    grid="off", resolution=64)[0]
    control_net = acn_controlnet(node, cn_file)[0]
    # what 'Load SCG ControlNet' puts in front of a ControlNet it loads (tested in test_host_loaders)
    control_net.control_model = host.pack.nodes.scg_controlnet.with_adapter(control_net, HintGeometry.of(ae),
                                                                            encoded=True)
    p, n = run_node(node("ACN_AdvancedControlNetApply_v2"), positive=pos, negative=neg, control_net=control_net,
                    image=hint, strength=1.0, start_percent=0.0, end_percent=1.0)
    with hints_of(p[0][1]["control"]) as seen:
        sample(unet, p, n, LATENT, steps=1)
    assert seen and seen[0].shape[-2:] == (61, 61)  # 509 for 512: the hint the SCG ControlNet is built for
    assert (seen[0][:1] - ae.hint(img.movedim(-1, 1), "HC0")).abs().max() <= 64 * 2.0 ** -24

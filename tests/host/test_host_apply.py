"""SCGControlApply inside a real ComfyUI sampler, with tiny SD1.5-architecture models."""
import comfy.model_management as mm
import pytest
import torch

import nodes
from scg_models.imaging import fit
from scg_testing.host import conditioning, make_images, random_ae, run_node, sample, tiny_controlnet, tiny_unet

LATENT = torch.zeros(1, 4, 8, 8)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def cn(unet):
    return tiny_controlnet(unet, seed=1)


@pytest.fixture(scope="module")
def ae():
    return random_ae(seed=0)


@pytest.fixture()
def apply(node):
    cls = node("SCGControlApply")

    def _apply(positive, negative, control_net, image, scg_autoencoder, modules="HC0", gains="", strength=1.0,
               start_percent=0.0, end_percent=1.0):
        return run_node(cls, positive=positive, negative=negative, control_net=control_net, image=image,
                        strength=strength, start_percent=start_percent, end_percent=end_percent,
                        scg_autoencoder=scg_autoencoder, modules=modules, gains=gains)
    return _apply


class HintSpy:
    """Records the ``hint`` the real control model receives, and counts autoencoder extractions."""

    def __init__(self, control_net, ae):
        self.hints, self.calls = [], 0
        self.handle = control_net.control_model.register_forward_pre_hook(self._hook, with_kwargs=True)
        self.ae, self.original = ae, ae.hint
        ae.hint = self._count

    def _hook(self, module, args, kwargs):
        self.hints.append(kwargs["hint"].detach().clone())

    def _count(self, *a, **kw):
        self.calls += 1
        return self.original(*a, **kw)

    def close(self):
        self.handle.remove()
        del self.ae.hint  # back to the class method

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def nchw(image):
    return image.movedim(-1, 1)


def test_control_acts_and_strength_zero_is_exact(unet, cn, scg_ae, apply):
    pos, neg = conditioning()
    img = make_images()
    plain = sample(unet, pos, neg, LATENT)
    p1, n1 = apply(pos, neg, cn, img, scg_ae)
    controlled = sample(unet, p1, n1, LATENT)
    assert (controlled - plain).abs().max() > 1e-3, "the SCG control has no effect"
    p0, n0 = apply(pos, neg, cn, img, scg_ae, strength=0.0)
    assert p0 is pos and n0 is neg  # like core: inputs returned unchanged
    assert torch.equal(sample(unet, p0, n0, LATENT), plain)


def test_control_model_receives_exactly_the_hint(unet, cn, ae, scg_ae, apply):
    pos, neg = conditioning()
    img = make_images(height=64, width=64)
    p, n = apply(pos, neg, cn, img, scg_ae, modules="HC0")
    with HintSpy(cn, ae) as spy:
        sample(unet, p, n, LATENT, steps=2)
    expected = ae.hint(nchw(img), "HC0")
    assert expected.shape[-2:] == (61, 61) == ae.output_size(64, 64)  # 509×509 for 512×512
    assert spy.hints and all(h.shape[-2:] == (61, 61) for h in spy.hints)
    for h in spy.hints:
        for i in range(h.shape[0]):  # cond and uncond are batched together
            assert torch.equal(h[i:i + 1], expected)


def test_hint_made_at_the_generation_size_non_square(unet, cn, ae, scg_ae, apply):
    pos, neg = conditioning()
    img = make_images(height=100, width=120)  # resized and centre-cropped to 64×96
    p, n = apply(pos, neg, cn, img, scg_ae, modules="HC2+HC3", gains="5:2,10:0.5")
    with HintSpy(cn, ae) as spy:
        sample(unet, p, n, torch.zeros(1, 4, 8, 12), steps=2)
    expected = ae.hint(fit(nchw(img), 64, 96), "HC2+HC3", "5:2,10:0.5")
    assert expected.shape[-2:] == (61, 93)
    assert all(torch.equal(h[:1], expected) for h in spy.hints)


def test_extraction_runs_once_per_run_and_resolution(unet, cn, ae, scg_ae, apply):
    pos, neg = conditioning()
    p, n = apply(pos, neg, cn, make_images(), scg_ae)
    with HintSpy(cn, ae) as spy:
        sample(unet, p, n, LATENT, steps=5)
        assert spy.calls == 1 and len(spy.hints) == 5  # 5 steps, one extraction
        sample(unet, p, n, LATENT, steps=3)
        assert spy.calls == 2  # a new sampling run extracts again (core clears its hint cache)
        sample(unet, p, n, torch.zeros(1, 4, 12, 8), steps=3)
        assert spy.calls == 3 and spy.hints[-1].shape[-2:] == ae.output_size(96, 64)


def test_matches_core_apply_fed_with_hypercolumn_extract(unet, cn, ae, scg_ae, apply, node, capsys):
    """The only difference: core resizes the hint (253 → 256 here, 509 → 512 at 512×512) before its hint block.

    256×256 keeps the test quick; the relative stretch is twice that of 512×512, so this
    bounds the 512 figure (which bench/nodes_bench.py prints).
    """
    pos, neg = conditioning()
    img = make_images(height=256, width=256)
    lat = torch.zeros(1, 4, 32, 32)
    hint, preview, grid = run_node(node("HypercolumnExtract"), image=img, scg_autoencoder=scg_ae, modules="HC0",
                                   gains="", grid="off")
    assert hint.shape == (1, 253, 253, 3)
    core = run_node(node("ControlNetApplyAdvanced"), positive=pos, negative=neg, control_net=cn, image=hint,
                    strength=1.0, start_percent=0.0, end_percent=1.0)
    scg = apply(pos, neg, cn, img, scg_ae)
    x_none = sample(unet, pos, neg, lat, steps=2)
    x_core = sample(unet, *core, lat, steps=2)
    x_scg = sample(unet, *scg, lat, steps=2)
    effect = (x_scg - x_none).norm().item()
    rel = (x_core - x_scg).norm().item() / effect
    with capsys.disabled():
        print(f"\n[SCG] 256×256, 2 steps: |core(HypercolumnExtract) − SCGControlApply| / |control effect| = {rel:.4f}")
    assert effect > 1e-3 and rel < 0.02  # measured 0.003 (256×256) and 0.0036 (512×512, bench)


def test_two_scg_controls_chain_and_both_act(unet, cn, ae, scg_ae, apply):
    pos, neg = conditioning()
    img = make_images()
    a = apply(pos, neg, cn, img, scg_ae, modules="HC0")
    b = apply(pos, neg, cn, img, scg_ae, modules="HC2")
    ab = apply(*a, cn, img, scg_ae, modules="HC2")
    outer = ab[0][0][1]["control"]
    assert outer.previous_controlnet is a[0][0][1]["control"]
    with HintSpy(cn, ae) as spy:
        x_ab = sample(unet, *ab, LATENT)
        assert spy.calls == 2
    x_a, x_b = sample(unet, *a, LATENT), sample(unet, *b, LATENT)
    assert (x_ab - x_a).abs().max() > 1e-3 and (x_ab - x_b).abs().max() > 1e-3


@pytest.mark.parametrize("scg_first", [True, False])
def test_chains_with_a_core_controlnet(unet, cn, scg_ae, apply, node, scg_first):
    pos, neg = conditioning()
    img = make_images()
    other = tiny_controlnet(unet, seed=7)  # stands for a canny/depth ControlNet

    def core(p, n):
        return run_node(node("ControlNetApplyAdvanced"), positive=p, negative=n, control_net=other, image=img,
                        strength=0.8, start_percent=0.0, end_percent=1.0)

    both = core(*apply(pos, neg, cn, img, scg_ae)) if scg_first else apply(*core(pos, neg), cn, img, scg_ae)
    chain = both[0][0][1]["control"]
    assert chain.previous_controlnet is not None
    x_both = sample(unet, *both, LATENT)
    assert (x_both - sample(unet, *apply(pos, neg, cn, img, scg_ae), LATENT)).abs().max() > 1e-3
    assert (x_both - sample(unet, *core(pos, neg), LATENT)).abs().max() > 1e-3


def test_batch_of_three_images(unet, cn, ae, scg_ae, apply):
    pos, neg = conditioning(batch=1)
    imgs = make_images(batch=3, seed=11)
    p, n = apply(pos, neg, cn, imgs, scg_ae)
    with HintSpy(cn, ae) as spy:
        out = sample(unet, p, n, torch.zeros(3, 4, 8, 8), steps=2)
    assert out.shape == (3, 4, 8, 8) and torch.isfinite(out).all()
    assert spy.calls == 1
    expected = ae.hint(nchw(imgs), "HC0")
    h = spy.hints[0]
    assert h.shape[0] == 6  # cond + uncond, 3 images each
    assert torch.equal(h[:3], expected) and torch.equal(h[3:], expected)
    assert not torch.equal(expected[0], expected[1])


def test_inputs_are_never_mutated(unet, cn, scg_ae, apply):
    pos, neg = conditioning()
    img = make_images()
    img_before = img.clone()
    state = (cn.cond_hint_original, cn.preprocess_image, cn.control_model, type(cn), cn.strength)
    p, n = apply(pos, neg, cn, img, scg_ae)
    sample(unet, p, n, LATENT, steps=2)
    assert pos[0][1] == {} and neg[0][1] == {}
    assert (cn.cond_hint_original, cn.preprocess_image, cn.control_model, type(cn), cn.strength) == state
    assert torch.equal(img, img_before)
    control = p[0][1]["control"]
    assert control is n[0][1]["control"]  # one copy shared by positive and negative, as core does
    copied = control.copy()
    assert type(copied) is type(control) and copied is not control
    assert copied.preprocess_image.__self__ is copied  # the hint hook follows the copy


def test_autoencoder_is_loaded_with_the_unet(unet, cn, scg_ae, apply):
    pos, neg = conditioning()
    p, n = apply(pos, neg, cn, make_images(), scg_ae)
    control = p[0][1]["control"]
    patcher = control.scg_source.patcher
    assert patcher in control.get_models() and cn.control_model_wrapped in control.get_models()
    sample(unet, p, n, LATENT, steps=1)
    loaded = mm.loaded_models()
    assert patcher in loaded and unet in loaded
    assert next(patcher.model.parameters()).device == torch.device(patcher.load_device)


def test_autoencoder_runs_in_the_controlnet_dtype(unet, ae, scg_ae, apply):
    pos, neg = conditioning()
    cn16 = tiny_controlnet(unet, dtype=torch.bfloat16)
    img = make_images()
    p, n = apply(pos, neg, cn16, img, scg_ae)
    patcher = p[0][1]["control"].scg_source.patcher
    assert next(patcher.model.parameters()).dtype == torch.bfloat16
    assert next(ae.parameters()).dtype == torch.float32  # the shared autoencoder is untouched
    with HintSpy(cn16, patcher.model) as spy:
        sample(unet, p, n, LATENT, steps=1)
    assert spy.hints[0].dtype == torch.bfloat16
    assert torch.equal(spy.hints[0][:1], patcher.model.hint(nchw(img), "HC0"))


def test_grey_and_rgba_images_are_converted(unet, cn, ae, scg_ae, apply, caplog):
    pos, neg = conditioning()
    rgb = make_images()
    grey = rgb[..., :1]
    rgba = torch.cat([rgb, torch.ones_like(grey)], -1)
    with caplog.at_level("INFO"):
        for image, word in ((grey, "grey"), (rgba, "alpha")):
            p, n = apply(pos, neg, cn, image, scg_ae)
            assert word in caplog.text
            with HintSpy(cn, ae) as spy:
                sample(unet, p, n, LATENT, steps=1)
            assert torch.equal(spy.hints[0][:1], ae.hint(nchw(image)[:, :3].expand(-1, 3, -1, -1), "HC0"))


@pytest.mark.parametrize("case,message", [
    ("mask", "image: got a MASK-shaped tensor"),
    ("range", "modules: module index 3 is out of range; this autoencoder has 3 modules"),
    ("group", "modules: unknown group 'HC7'"),
    ("gains", "gains: module 2 has a gain but is not in the selection"),
    ("sdxl", "control_net: this is an SDXL-type ControlNet"),
    ("channels", "image: expected 1, 3 or 4 channels"),
    ("not_a_controlnet", "control_net: SCG needs an image ControlNet"),
])
def test_clear_errors_name_the_input(host, unet, cn, scg_ae, apply, case, message):
    pos, neg = conditioning()
    img, control, ae_in, modules, gains = make_images(), cn, scg_ae, "HC0", ""
    if case == "mask":
        img = img[..., 0]
    elif case == "range":
        ae_in = host.pack.nodes.common.SCGAutoencoder(random_ae(n_vector=3), "three-modules")
        modules = "0,1,2,3,4"
    elif case == "group":
        ae_in = host.pack.nodes.common.SCGAutoencoder(random_ae(n_vector=3), "three-modules")
        modules = "HC7"
    elif case == "gains":
        gains = "2:1.5"
    elif case == "sdxl":
        control = tiny_controlnet(None, sdxl=True)
    elif case == "channels":
        img = torch.rand(1, 64, 64, 2)
    elif case == "not_a_controlnet":
        control = nodes.NODE_CLASS_MAPPINGS  # anything that is not a ControlNet
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        apply(pos, neg, control, img, ae_in, modules=modules, gains=gains)

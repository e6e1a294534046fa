"""SCGControlApply inside a real ComfyUI sampler, with tiny SD1.5-architecture models."""
import contextlib

import comfy.model_management as mm
import pytest
import torch

import nodes
from scg_models.geometry import HintGeometry
from scg_models.imaging import fit
from scg_testing.core import recorded_hints
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
        self.calls = 0
        # the real control model (a copy wears an adapter in front of it)
        self.stack = contextlib.ExitStack()
        self.hints = self.stack.enter_context(recorded_hints(control_net.control_model))
        self.ae, self.original = ae, ae.hint
        ae.hint = self._count

    def _count(self, *a, **kw):
        self.calls += 1
        return self.original(*a, **kw)

    def close(self):
        self.stack.close()
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
    assert expected.shape[-2:] == (61, 61) == ae.output_size(64, 64)  # 509x509 for 512x512
    assert spy.hints and all(h.shape[-2:] == (61, 61) for h in spy.hints)
    for h in spy.hints:
        for i in range(h.shape[0]):  # cond and uncond are batched together
            assert torch.equal(h[i:i + 1], expected)


def test_hint_made_at_the_generation_size_non_square(unet, cn, ae, scg_ae, apply):
    pos, neg = conditioning()
    img = make_images(height=100, width=120)  # resized and centre-cropped to 64x96
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


def scg_controlnet(host, cn, ae):
    """What 'Load SCG ControlNet' gives for ``cn`` (the loader test checks it on a full-size file)."""
    c = cn.copy()
    c.control_model = host.pack.nodes.scg_controlnet.with_adapter(cn, HintGeometry.of(ae), encoded=True)
    return c


def test_hypercolumn_extract_in_core_apply_matches_scg_control_apply(host, unet, cn, ae, scg_ae, apply, node):
    """HypercolumnExtract's hint at the generation size passes through core's Apply ControlNet unchanged.

    It arrives as the encoded image and is decoded to within 4e-6 of the hint Apply SCG ControlNet
    gives the control model; the samples agree to that precision.
    """
    pos, neg = conditioning()
    img = make_images(height=100, width=80)  # short side 64: fitted to 80x64, a generation of that size
    latent = torch.zeros(1, 4, 10, 8)
    hint, preview, grid = run_node(node("HypercolumnExtract"), image=img, scg_autoencoder=scg_ae, modules="HC0",
                                   gains="", grid="off", resolution=64)
    assert hint.shape == (1, 80, 64, 3) and preview.shape == (1, 77, 61, 3)
    assert 0 <= hint.min() and hint.max() <= 1
    loaded = scg_controlnet(host, cn, ae)
    core = run_node(node("ControlNetApplyAdvanced"), positive=pos, negative=neg, control_net=loaded, image=hint,
                    strength=1.0, start_percent=0.0, end_percent=1.0)
    scg = apply(pos, neg, cn, img, scg_ae)
    with HintSpy(cn, ae) as spy:
        x_core = sample(unet, *core, latent, steps=2)
        core_hint = spy.hints[-1]
        x_scg = sample(unet, *scg, latent, steps=2)
    assert core_hint.shape[-2:] == (77, 61) == spy.hints[-1].shape[-2:]
    assert (core_hint - spy.hints[-1]).abs().max() <= 64 * 2.0 ** -24  # the encoding's rounding, nothing else
    effect = (x_scg - sample(unet, pos, neg, latent, steps=2)).norm()
    assert effect > 1e-3 and (x_core - x_scg).norm() / effect < 1e-4


def test_the_loaders_controlnet_takes_the_raw_hint_in_scg_control_apply(host, unet, cn, ae, scg_ae, apply):
    """The encoded-image stage 'Load SCG ControlNet' adds is swapped for the raw one on the copy: bit-exact."""
    loaded = scg_controlnet(host, cn, ae)
    pos, neg = conditioning()
    img = make_images()
    p, n = apply(pos, neg, loaded, img, scg_ae)
    adapter = p[0][1]["control"].control_model
    assert not adapter.encoded and adapter.control_model is cn.control_model and loaded.control_model.encoded
    with HintSpy(cn, ae) as spy:
        sample(unet, p, n, LATENT, steps=1)
    assert torch.equal(spy.hints[0][:1], ae.hint(nchw(img), "HC0"))


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
    assert type(control) is type(cn)  # the object as given, not a subclass of ours
    copied = control.copy()
    assert type(copied) is type(control) and copied is not control
    assert copied.preprocess_image is control.preprocess_image  # the hint hook follows core's copies
    assert copied.control_model is control.control_model and control.control_model.control_model is cn.control_model


def test_the_hint_stage_is_a_module_and_a_deep_clone_shares_no_weights(cn, scg_ae, apply):
    """What a multi-GPU clone does (``deepclone_multigpu`` on hosts that have it): deep-copy the control model."""
    pos, neg = conditioning()
    control = apply(pos, neg, cn, make_images(), scg_ae)[0][0][1]["control"]
    adapter = control.control_model
    assert isinstance(adapter, torch.nn.Module) and adapter.control_model is cn.control_model
    assert dict(adapter.named_parameters()).keys() == {"control_model." + k for k, _ in cn.control_model.named_parameters()}
    if hasattr(control, "deepclone_multigpu"):
        clone = control.deepclone_multigpu(mm.get_torch_device())
    else:  # ComfyUI 0.8 has no multi-GPU clones: do what they do
        import copy

        clone = control.copy()
        clone.control_model = copy.deepcopy(clone.control_model)
    assert clone.control_model is not adapter and clone.control_model.control_model is not cn.control_model
    ours = {id(t) for t in adapter.parameters()}
    assert not ours & {id(t) for t in clone.control_model.parameters()}


def test_autoencoder_is_loaded_with_the_unet(unet, cn, scg_ae, apply):
    pos, neg = conditioning()
    p, n = apply(pos, neg, cn, make_images(), scg_ae)
    control = p[0][1]["control"]
    patcher = control.preprocess_image.patcher
    assert p[0][1]["additional_models"] == [patcher] == n[0][1]["additional_models"]
    assert cn.control_model_wrapped in control.get_models()
    sample(unet, p, n, LATENT, steps=1)
    loaded = mm.loaded_models()
    assert patcher in loaded and unet in loaded
    assert next(patcher.model.parameters()).device == torch.device(patcher.load_device)


def test_autoencoder_runs_in_the_controlnet_dtype(unet, ae, scg_ae, apply):
    pos, neg = conditioning()
    cn16 = tiny_controlnet(unet, dtype=torch.bfloat16)
    img = make_images()
    p, n = apply(pos, neg, cn16, img, scg_ae)
    patcher = p[0][1]["control"].preprocess_image.patcher
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
            expected = ae.hint(nchw(image)[:, :3].expand(-1, 3, -1, -1), "HC0")
            assert torch.equal(spy.hints[0][:1], expected)


def test_a_broken_controlnet_stops_the_run_naming_it(unet, cn, scg_ae, apply, scg_error):
    """NaN weights make NaN control: an error naming the input, not NaN latents reported as success."""
    broken = tiny_controlnet(unet, seed=5)
    with torch.no_grad():
        broken.control_model.middle_block_out[0].weight.fill_(float("nan"))
    pos, neg = conditioning()
    p, n = apply(pos, neg, broken, make_images(), scg_ae)
    with pytest.raises(scg_error, match="control_net: the ControlNet's output is not finite"):
        sample(unet, p, n, LATENT, steps=1)


def test_huge_gains_are_an_error_naming_them(unet, cn, scg_ae, apply, scg_error):
    pos, neg = conditioning()
    with pytest.raises(scg_error, match="^gains"):  # refused when parsed, or when the hint is made
        p, n = apply(pos, neg, cn, make_images(), scg_ae, gains="1e30")
        sample(unet, p, n, LATENT, steps=1)


@pytest.mark.parametrize("case,message", [
    ("mask", "image: got a MASK-shaped tensor"),
    ("range", "modules: module index 3 is out of range; this autoencoder has 3 modules"),
    ("group", "modules: unknown group 'HC7'"),
    ("gains", "gains: module 2 has a gain but is not in the selection"),
    ("sdxl", "control_net: this is an SDXL-type ControlNet"),
    ("channels", "image: expected 1, 3 or 4 channels"),
    ("not_a_controlnet", "control_net: SCG needs an image ControlNet"),
    ("strength_nan", "strength: expected a number from 0 to 10, got nan"),
    ("start_nan", "start_percent: expected a number from 0 to 1, got nan"),
    ("end_inf", "end_percent: expected a number from 0 to 1, got inf"),
    ("empty", "image: the batch is empty"),
    ("no_autoencoder", "scg_autoencoder: connect an SCG autoencoder"),
])
def test_clear_errors_name_the_input(host, unet, cn, scg_ae, apply, scg_error, case, message):
    pos, neg = conditioning()
    img, control, ae_in, modules, gains = make_images(), cn, scg_ae, "HC0", ""
    numbers = {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}
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
    elif case == "strength_nan":
        numbers["strength"] = float("nan")
    elif case == "start_nan":
        numbers["start_percent"] = float("nan")
    elif case == "end_inf":
        numbers["end_percent"] = float("inf")
    elif case == "empty":
        img = img[:0]
    elif case == "no_autoencoder":
        ae_in = object()
    with pytest.raises(scg_error, match=message.replace("(", r"\(")):
        apply(pos, neg, control, img, ae_in, modules=modules, gains=gains, **numbers)

"""SD1.5 or nothing; the ControlNet's layout and hint sizes at full size (meta tensors: no memory)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from scg_testing import tiny_sd15
from scg_testing.tiny_sd15 import SD15_UNET, TINY_SPEC
from scg_testing.trainers import controlnet_args

pytestmark = pytest.mark.host


def _meta_unet_sd(unet_config: dict) -> dict:
    """A checkpoint-layout state dict of a full-size UNet on the meta device (shapes only)."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as oai
    import comfy.ops

    cfg = dict(unet_config)
    cfg.setdefault("num_heads", -1)
    cfg.setdefault("num_head_channels", 64)
    unet = oai.UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)
    return {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}


SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}


def test_sd15_detection_accepts_sd15_and_names_what_else_it_is(comfy):
    from train import sd15

    mc = sd15.check_sd15_state_dict(_meta_unet_sd({**SD15_UNET, "num_heads": 8, "num_head_channels": -1}),
                                    "v1-5.safetensors")
    assert type(mc).__name__ == "SD15"
    assert {k: v for k, v in mc.unet_config.items() if k in SD15_UNET} == SD15_UNET
    with pytest.raises(sd15.NotSD15Error, match=r"not a Stable Diffusion 1\.5 checkpoint: ComfyUI detects SDXL "
                                                 r"\(model_channels 320, context_dim 2048"):
        sd15.check_sd15_state_dict(_meta_unet_sd(SDXL_UNET), "sdxl.safetensors")


def test_cli_refuses_a_base_that_is_not_sd15(files, tmp_path, capsys):
    from train import sd15
    from train.controlnet import main

    # a spec that declares another architecture
    base = sd15.load_base(files["base"])
    tiny_sd15.save_checkpoint(base, tmp_path / "sdxl_spec.safetensors", spec={**TINY_SPEC, "arch": "sdxl"})
    argv = controlnet_args(files, tmp_path / "x.safetensors", "--steps", "1")
    argv[argv.index("--base") + 1] = str(tmp_path / "sdxl_spec.safetensors")
    assert main(argv) == 2
    assert "declares architecture 'sdxl', not 'sd15'" in capsys.readouterr().err
    # an SD1.5-shaped spec with SDXL's linear transformer projections
    linear = {**TINY_SPEC, "unet": {**TINY_SPEC["unet"], "use_linear_in_transformer": True}}
    tiny_sd15.save_checkpoint(base, tmp_path / "linear.safetensors", spec=linear)
    with pytest.raises(sd15.NotSD15Error, match="use_linear_in_transformer=True is not SD1.5's"):
        sd15.load_base(tmp_path / "linear.safetensors")
    # a real-looking checkpoint (no spec): ComfyUI's own detection decides, before anything is built
    sd = {"model.diffusion_model." + k: v for k, v in base.unet.state_dict().items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "tiny_unet.safetensors"))
    argv[argv.index("--base") + 1] = str(tmp_path / "tiny_unet.safetensors")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is not a Stable Diffusion 1.5 checkpoint: ComfyUI detects a model ComfyUI does not recognise" in err
    assert "model_channels 64, context_dim 32" in err


def test_full_size_controlnet_layout_is_what_core_loads_as_sd15(comfy):
    """Our ControlNet at full SD1.5 size: ComfyUI's ControlNet detection says SD15, and the hint
    block turns the 509x509 hint of a 512 image into the 64x64 latent (765 -> 96 at 768)."""
    import comfy.model_detection

    from scg_models import ModularAutoencoder
    from train import sd15

    cfg = {**SD15_UNET, "num_heads": 8, "num_head_channels": -1}
    cm = sd15.build_controlnet(cfg, device="meta")
    sd = cm.state_dict()
    assert "input_hint_block.14.weight" in sd and "zero_convs.11.0.weight" in sd and "middle_block_out.0.bias" in sd
    mc = comfy.model_detection.model_config_from_unet(sd, "", use_base_if_no_match=False)
    assert type(mc).__name__ == "SD15"
    ae = ModularAutoencoder()
    for res in (512, 768, 640):
        hint = ae.output_size(res, res)
        assert hint == (res - 3, res - 3)
        assert sd15.hint_block_size(hint, cm) == (res // 8, res // 8)
    # the real forward shapes, on meta tensors
    h = cm.input_hint_block(torch.empty(1, 3, 509, 509, device="meta"), None, None)
    assert tuple(h.shape) == (1, 320, 64, 64)


def test_controlnet_starts_as_the_unet_encoder_with_zero_outputs(files):
    from train import sd15

    base = sd15.load_base(files["base"])
    cm = sd15.build_controlnet(base, seed=1)
    unet = base.unet.state_dict()
    for k, v in cm.state_dict().items():
        if k.startswith(sd15.NEW_PREFIXES):
            continue
        assert torch.equal(v, unet[k]), k
    zero = [k for k in cm.state_dict() if k.startswith(("zero_convs.", "middle_block_out.", "input_hint_block.14."))]
    assert zero and all(cm.state_dict()[k].abs().sum() == 0 for k in zero)
    assert cm.state_dict()["input_hint_block.0.weight"].abs().sum() > 0
    x = torch.randn(1, 4, 4, 4)
    out = cm(x=x, hint=torch.rand(1, 3, 29, 29), timesteps=torch.tensor([10.0]), context=torch.randn(1, 77, 32))
    assert all(o.abs().sum() == 0 for o in out["output"] + out["middle"])


def test_gradient_checkpointing_toggles_and_keeps_gradients(files):
    """Checkpointed and plain forward/backward give the same loss and gradients."""
    from train import sd15

    base = sd15.load_base(files["base"])
    base.unet.requires_grad_(False)
    cm = sd15.build_controlnet(base, seed=0)
    with torch.no_grad():
        for p in cm.zero_convs.parameters():
            p.normal_(0, 0.01)
    ms = base.model.model_sampling
    lat, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    sigma = ms.sigmas[torch.tensor([100, 800])]
    ctx, hint = torch.randn(2, 77, 32), torch.rand(2, 3, 29, 29)

    def grads():
        cm.zero_grad(set_to_none=True)
        eps = sd15.predict_noise(base.unet, cm, ms, ms.noise_scaling(sigma, noise, lat), sigma, ctx, hint)
        loss = torch.nn.functional.mse_loss(eps, noise)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in cm.parameters()]

    plain = grads()
    assert sd15.enable_checkpointing(base.unet, cm) > 10
    assert sd15.enable_checkpointing(base.unet, cm) == 0  # already on
    ckpt = grads()
    n = sd15.disable_checkpointing(base.unet, cm)
    assert n > 10 and not any("_scg_forward" in m.__dict__ for m in cm.modules())
    again = grads()
    for other in (ckpt, again):
        assert torch.allclose(plain[0], other[0], atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain[1], other[1]))

"""SCGControlApply: core's Apply ControlNet, with the hint made by the SCG autoencoder at the generation size."""
from __future__ import annotations

import comfy.controlnet
import nodes as comfy_nodes  # ComfyUI's nodes.py (this package's own folder is imported relatively)
from comfy_api.latest import io

from ..scg_models import SCGError
from . import subset
from .common import CATEGORY, GAINS_TOOLTIP, MODULES_TOOLTIP, ScgAutoencoderType, image_to_nchw, resolve_selection
from .scg_controlnet import ExactHintModel, SCGControlNet, compute_dtype


def check_control_net(control_net, ae=None) -> None:
    """A ControlNet SCG can drive: core's image-hint ControlNet with 3 hint channels (or, with the
    autoencoder ``ae``, an any-subset one: 3 + its module count), no latent input."""
    if not isinstance(control_net, comfy.controlnet.ControlNet) or isinstance(control_net, comfy.controlnet.ControlLora):
        raise SCGError(f"control_net: SCG needs an image ControlNet (SD1.5 layout); got {type(control_net).__name__}. "
                       "Load it with 'Load SCG ControlNet' or 'Load ControlNet Model'.")
    model = control_net.control_model
    if isinstance(model, ExactHintModel):
        model = model.model
    block = getattr(model, "input_hint_block", None)
    if block is None or control_net.latent_format is not None:
        raise SCGError("control_net: this ControlNet takes a latent, not an image hint; SCG needs an SD1.5 "
                       "image ControlNet")
    channels = getattr(block[0], "in_channels", None)
    if channels != 3 and not (ae is not None and subset.is_any_subset(control_net, ae)):
        wide = f" (an any-subset ControlNet for {ae.n_vector} modules takes {ae.n_vector + 3})" if ae is not None else ""
        raise SCGError(f"control_net: its hint block takes {channels} channels; the SCG hint has 3{wide}")
    if getattr(model, "num_classes", None) is not None:
        raise SCGError("control_net: this is an SDXL-type ControlNet (it needs a pooled 'y' input); "
                       "SCG needs an SD1.5 ControlNet")


class SCGControlApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCGControlApply",
            display_name="Apply SCG ControlNet",
            category=CATEGORY,
            description=("Core's Apply ControlNet for SCG: takes the ordinary image and makes the SCG hint from it "
                         "at the generation size (latent × 8, e.g. 509×509 for 512×512, as the authors do), once "
                         "per sampling run. Chains with core ControlNets and with itself."),
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive conditioning to attach the control to."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning to attach the control to."),
                io.ControlNet.Input("control_net", tooltip="An SCG ControlNet (from 'Load SCG ControlNet', or a "
                                    "converted file from 'Load ControlNet Model')."),
                io.Image.Input("image", tooltip="The ordinary image (not a hint). It is centre-cropped and "
                               "resized to the generation size, then the autoencoder makes the hint from it."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="How strongly the control acts; 0 leaves the conditioning unchanged."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling at which the control starts acting."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling at which the control stops acting."),
                ScgAutoencoderType.Input("scg_autoencoder", tooltip="The SCG autoencoder that makes the hint "
                                         "(the one the ControlNet was trained with)."),
                io.String.Input("modules", default="HC0", tooltip=MODULES_TOOLTIP),
                io.String.Input("gains", default="", tooltip=GAINS_TOOLTIP),
                io.Vae.Input("vae", optional=True, tooltip="Only for ControlNets that need one (not SD1.5); "
                             "accepted for compatibility with core's Apply ControlNet."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning with the control."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning with the control."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, control_net, image, strength, start_percent, end_percent,
                scg_autoencoder, modules, gains, vae=None) -> io.NodeOutput:
        if strength == 0:
            return io.NodeOutput(positive, negative)
        if control_net is None:
            raise SCGError("control_net: no ControlNet connected")
        if scg_autoencoder is None or not hasattr(scg_autoencoder, "patcher"):
            raise SCGError("scg_autoencoder: connect an SCG autoencoder ('Load SCG Autoencoder' or the second "
                           "output of 'Load SCG ControlNet')")
        ae = scg_autoencoder.ae
        check_control_net(control_net, ae)
        images = ae.check_images(image_to_nchw(image, "image"), "image")
        mods, gain_list = resolve_selection(ae, modules, gains)
        source = subset.hint_source(control_net, scg_autoencoder, mods, gain_list, compute_dtype(control_net))
        scg_net = SCGControlNet.wrap(control_net, source)
        # core's own apply: one copy per previous ControlNet, chaining, control_apply_to_uncond
        pos, neg = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
            positive, negative, scg_net, images.movedim(1, -1), strength, start_percent, end_percent, vae=vae)
        return io.NodeOutput(pos, neg)

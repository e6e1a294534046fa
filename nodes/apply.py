"""SCGControlApply: core's Apply ControlNet, with the hint made by the SCG autoencoder at the generation size."""
from __future__ import annotations

import comfy.controlnet
from comfy_api.latest import io

from ..scg_models import SCGError
from ..scg_models.geometry import HintGeometry
from . import subset
from .common import (
    CATEGORY,
    GAINS_TOOLTIP,
    MODULES_TOOLTIP,
    ScgAutoencoderType,
    check_autoencoder,
    check_number,
    image_to_nchw,
    resolve_selection,
)
from .scg_controlnet import compute_dtype, control_module, with_adapter


def check_control_net(control_net, ae=None) -> None:
    """A ControlNet SCG can drive: an image-hint ControlNet (core's or a subclass) with 3 hint channels
    (or, given the autoencoder ``ae``, an any-subset one: 3 + its module count)."""
    if not isinstance(control_net, comfy.controlnet.ControlNet) or isinstance(control_net, comfy.controlnet.ControlLora):
        raise SCGError(f"control_net: SCG needs an image ControlNet (SD1.5 layout); got {type(control_net).__name__}. "
                       "Load it with 'Load SCG ControlNet' or 'Load ControlNet Model'.")
    model = control_module(control_net.control_model)
    block = getattr(model, "input_hint_block", None)
    if block is None or control_net.latent_format is not None:
        raise SCGError("control_net: this ControlNet takes a latent, not an image hint; SCG needs an SD1.5 "
                       "image ControlNet")
    channels = getattr(block[0], "in_channels", None)
    if channels != 3 and not (ae is not None and subset.is_any_subset(control_net, ae)):
        wide = f" (an any-subset ControlNet for its {ae.n_vector} modules: {ae.n_vector + 3})" if ae is not None else ""
        raise SCGError(f"control_net: its hint block takes {channels} channels; the SCG hint has 3{wide}")
    if getattr(model, "num_classes", None) is not None:
        raise SCGError("control_net: this is an SDXL-type ControlNet (it needs a pooled 'y' input); "
                       "SCG needs an SD1.5 ControlNet")


def attach(conditioning: list, control_for, patcher) -> list:
    """``conditioning`` with each entry's control replaced by ``control_for(previous control)``.

    As core's Apply ControlNet: entries are shallow-copied (inputs are never mutated) and the
    control is not copied onto the uncond. The autoencoder's patcher joins ``additional_models``,
    so the sampler loads it with the UNet and the ControlNet.
    """
    out = []
    for cond, entry in conditioning:
        d = entry.copy()
        d["control"] = control_for(d.get("control"))
        d["control_apply_to_uncond"] = False
        extra = list(d.get("additional_models", []))
        d["additional_models"] = extra if patcher in extra else extra + [patcher]
        out.append([cond, d])
    return out


class SCGControlApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCGControlApply",
            display_name="Apply SCG ControlNet",
            category=CATEGORY,
            description=("Core's Apply ControlNet for SCG: takes the ordinary image and makes the SCG hint from it "
                         "at the generation size (latent x 8; the hint is 509x509 for 512x512, as the authors make "
                         "it), once per sampling run. Takes any SD1.5 ControlNet object as it is (core's, or "
                         "Advanced-ControlNet's with its keyframes, masks and weights) and chains with other "
                         "ControlNets and with itself."),
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive conditioning to attach the control to."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning to attach the control to."),
                io.ControlNet.Input("control_net", tooltip="An SCG ControlNet: from 'Load SCG ControlNet', a "
                                    "converted file from 'Load ControlNet Model', or Advanced-ControlNet's loader "
                                    "(its timestep keyframes, masks and weights are kept)."),
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
        strength = check_number(strength, "strength", 0.0, 10.0)
        start = check_number(start_percent, "start_percent", 0.0, 1.0)
        end = check_number(end_percent, "end_percent", 0.0, 1.0)
        if strength == 0:
            return io.NodeOutput(positive, negative)
        if control_net is None:
            raise SCGError("control_net: no ControlNet connected")
        scg_ae = check_autoencoder(scg_autoencoder)
        check_control_net(control_net, scg_ae.ae)
        images = image_to_nchw(image, scg_ae.ae, "image")
        mods, gain_list = resolve_selection(scg_ae.ae, modules, gains)
        geometry = HintGeometry.of(scg_ae.ae)
        hint = subset.hint_hook(control_net, images, scg_ae.patcher(compute_dtype(control_net)), mods, gain_list,
                                geometry)  # any-subset ControlNets: hint + presence mask
        copies = {}

        def control_for(previous):
            """One copy per previous ControlNet, shared by positive and negative (as core does)."""
            if previous not in copies:
                c = control_net.copy()  # keeps what the object carries (e.g. Advanced-ControlNet's keyframes)
                c.set_cond_hint(images, strength, (start, end), vae=vae)
                c.preprocess_image = hint
                c.control_model = with_adapter(c, geometry, encoded=False)
                c.set_previous_controlnet(previous)
                copies[previous] = c
            return copies[previous]

        return io.NodeOutput(attach(positive, control_for, hint.patcher), attach(negative, control_for, hint.patcher))

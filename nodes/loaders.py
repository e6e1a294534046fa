"""LoadSCGAutoencoder and LoadSCGControlNet: files from models/scg and models/controlnet."""
from __future__ import annotations

import os

import comfy.controlnet
import comfy.model_detection
import folder_paths
from comfy_api.latest import io

from ..scg_models import SCGError, formats, load_autoencoder
from ..scg_models.errors import NoControlNetError
from ..scg_models.geometry import HintGeometry
from . import subset
from .common import LOADER_CATEGORY, MODEL_FOLDER, SHIPPED_MODEL, SCGAutoencoder, ScgAutoencoderType
from .scg_controlnet import with_adapter


def _file_fingerprint(folder: str, name: str) -> str:
    """Changes when the file is replaced (e.g. a retrained autoencoder), so ComfyUI reloads it."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        return f"missing:{name}"
    st = os.stat(path)
    return f"{path}:{st.st_mtime_ns}:{st.st_size}"


def _full_path(folder: str, name: str, input_name: str) -> str:
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise SCGError(f"{input_name}: file {name!r} not found in the {folder!r} model folders "
                       f"({', '.join(folder_paths.get_folder_paths(folder))})")
    return path


def _holds_autoencoder(path: str) -> bool:
    try:
        load_autoencoder(path)
    except SCGError:
        return False
    return True


def check_sd15(state_dict: dict, name: str) -> None:
    """Raise naming the input unless ``state_dict`` (ComfyUI's ldm layout) is an SD1.5 ControlNet."""
    config = comfy.model_detection.detect_unet_config(state_dict, "")
    model = comfy.model_detection.model_config_from_unet(state_dict, "", use_base_if_no_match=False)
    if model is not None and type(model).__name__ == "SD15":
        return
    found = type(model).__name__ if model is not None else "an unknown model"
    details = ""
    if config:
        details = ", ".join(f"{k} {config.get(k)}" for k in ("model_channels", "context_dim", "adm_in_channels"))
    raise SCGError(f"control_net_name: {name!r} is not an SD1.5 ControlNet (it looks like {found}: {details}); "
                   "SCG runs with SD1.5 ControlNets only")


class LoadSCGAutoencoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = folder_paths.get_filename_list(MODEL_FOLDER)
        return io.Schema(
            node_id="LoadSCGAutoencoder",
            display_name="Load SCG Autoencoder",
            category=LOADER_CATEGORY,
            description=("Loads the SCG modular autoencoder from models/scg: our .safetensors, the authors' .pth "
                         "(equ_nv16_vl4_rn1_Bipolar_norm.pth) or an authors' SCG ControlNet .ckpt (its embedded "
                         "autoencoder); scg_default.safetensors ships with the extension. The format is read from "
                         "the file's content."),
            inputs=[
                io.Combo.Input("autoencoder_name", options=names,
                               default=SHIPPED_MODEL if SHIPPED_MODEL in names else None,
                               tooltip="A file in ComfyUI/models/scg (or an 'scg' path of extra_model_paths.yaml), or "
                                       f"{SHIPPED_MODEL}, the autoencoder shipped with the extension."),
            ],
            outputs=[
                ScgAutoencoderType.Output("scg_autoencoder", display_name="scg_autoencoder",
                                          tooltip="The autoencoder, for Hypercolumn Extract and Apply SCG ControlNet."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, autoencoder_name):
        return _file_fingerprint(MODEL_FOLDER, autoencoder_name)

    @classmethod
    def execute(cls, autoencoder_name) -> io.NodeOutput:
        path = _full_path(MODEL_FOLDER, autoencoder_name, "autoencoder_name")
        try:
            ae = load_autoencoder(path)
        except SCGError as e:
            raise SCGError(f"autoencoder_name: {e}") from None
        return io.NodeOutput(SCGAutoencoder(ae, autoencoder_name))


class LoadSCGControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadSCGControlNet",
            display_name="Load SCG ControlNet",
            category=LOADER_CATEGORY,
            description=("Loads an SCG ControlNet from models/controlnet: the authors' .ckpt as released (no "
                         "conversion step) or a converted .safetensors. Gives the ControlNet and the autoencoder "
                         "stored in the same file; use both with Apply SCG ControlNet."),
            inputs=[
                io.Combo.Input("control_net_name", options=folder_paths.get_filename_list("controlnet"),
                               tooltip="A file in ComfyUI/models/controlnet: the authors' SCG ControlNet .ckpt or "
                                       "our converted .safetensors."),
            ],
            outputs=[
                io.ControlNet.Output("control_net", display_name="control_net",
                                     tooltip="The ControlNet (SD1.5). Its hint is the SCG hint: from Apply SCG "
                                             "ControlNet, or HypercolumnExtract's hint output in any apply node."),
                ScgAutoencoderType.Output("scg_autoencoder", display_name="scg_autoencoder",
                                          tooltip="The autoencoder stored with this ControlNet."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, control_net_name):
        return _file_fingerprint("controlnet", control_net_name)

    @classmethod
    def execute(cls, control_net_name) -> io.NodeOutput:
        path = _full_path("controlnet", control_net_name, "control_net_name")
        try:
            cn = formats.load_controlnet_file(path, check_tensors=False)  # the architecture is checked first
        except NoControlNetError as e:
            if _holds_autoencoder(path):
                raise SCGError(f"control_net_name: {control_net_name!r} is an SCG autoencoder, not a ControlNet: "
                               f"move it to models/{MODEL_FOLDER} and load it with 'Load SCG Autoencoder'") from None
            raise SCGError(f"control_net_name: {e}") from None
        except SCGError as e:
            raise SCGError(f"control_net_name: {e}") from None
        if cn.autoencoder is None:
            raise SCGError(f"control_net_name: {control_net_name!r} holds no SCG autoencoder, so it is not an SCG "
                           "ControlNet; load ordinary ControlNets with 'Load ControlNet Model'")
        check_sd15(cn.state_dict, control_net_name)
        try:
            formats.check_controlnet_tensors(cn.state_dict, path)
        except SCGError as e:
            raise SCGError(f"control_net_name: {e}") from None
        control = comfy.controlnet.load_controlnet_state_dict(cn.state_dict)
        if control is None:
            raise SCGError(f"control_net_name: ComfyUI could not build a ControlNet from {control_net_name!r}")
        try:
            subset.remember_trained(control, cn, control_net_name)  # any-subset or per-group (and its modules)
        except SCGError as e:
            raise SCGError(f"control_net_name: {e}") from None
        # a fresh object of ours: its control model takes HypercolumnExtract's hint output in any apply node
        control.control_model = with_adapter(control, HintGeometry.of(cn.autoencoder), encoded=True)
        return io.NodeOutput(control, SCGAutoencoder(cn.autoencoder, control_net_name))

"""HypercolumnExtract: an image batch → the SCG hint, a [0, 1] preview and a sheet of every group."""
from __future__ import annotations

import torch

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from ..scg_models import minmax
from ..scg_models.grid import group_grid
from .common import (CATEGORY, GAINS_TOOLTIP, MODULES_TOOLTIP, HintSource, ScgAutoencoderType, image_to_nchw,
                     loaded_module, log, resolve_selection, to_image)

#: generous activation bytes per input pixel per fp32 value of one hint extraction (measured peak: see docs)
BYTES_PER_PIXEL = 4 * 40
MAX_CHUNK = 32
GRID_OPTIONS = ["labelled", "plain", "off"]
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def chunk_size(batch: int, height: int, width: int, device: torch.device, grid: bool) -> int:
    """How many images to process at once so one chunk fits comfortably in free memory."""
    per_image = BYTES_PER_PIXEL * height * width * (3 if grid else 1)
    free = mm.get_free_memory(device)
    return max(1, min(batch, MAX_CHUNK, int(free * 0.5 // per_image)))


class HypercolumnExtract(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HypercolumnExtract",
            display_name="Hypercolumn Extract (SCG)",
            category=CATEGORY,
            description=("Runs the SCG autoencoder on an image batch: the hint of the selected modules (raw values, "
                         "for a ControlNet), a preview of it in [0, 1] for Preview/Save Image, and a sheet with every "
                         "group of the autoencoder side by side. The hint is smaller than the image (509×509 for "
                         "512×512)."),
            inputs=[
                io.Image.Input("image", tooltip="Images to extract from (grey and RGBA are converted to RGB)."),
                ScgAutoencoderType.Input("scg_autoencoder", tooltip="The SCG autoencoder."),
                io.String.Input("modules", default="HC0", tooltip=MODULES_TOOLTIP),
                io.String.Input("gains", default="", tooltip=GAINS_TOOLTIP),
                io.Combo.Input("grid", options=GRID_OPTIONS, default="labelled",
                               tooltip="The group sheet: with group names, without, or off (skips the work; the "
                                       "grid output is then a small blank image)."),
            ],
            outputs=[
                io.Image.Output("hint", display_name="hint", tooltip="The hint, un-normalised (values outside "
                                "[0, 1]): feed it to a ControlNet, not to Save Image."),
                io.Image.Output("preview", display_name="preview", tooltip="The hint scaled to [0, 1] per image "
                                "and channel, for viewing."),
                io.Image.Output("grid", display_name="grid", tooltip="Every group's preview side by side (the input "
                                "first), one sheet per image."),
            ],
        )

    @classmethod
    def execute(cls, image, scg_autoencoder, modules, gains, grid="labelled") -> io.NodeOutput:
        if scg_autoencoder is None or not hasattr(scg_autoencoder, "patcher"):
            raise ValueError("scg_autoencoder: connect an SCG autoencoder ('Load SCG Autoencoder')")
        ae = scg_autoencoder.ae
        images = ae.check_images(image_to_nchw(image, "image"), "image")
        mods, gain_list = resolve_selection(ae, modules, gains)
        source = HintSource(scg_autoencoder, mods, gain_list, torch.float32)
        batch, _, height, width = images.shape
        mm.load_models_gpu([source.patcher], memory_required=BYTES_PER_PIXEL * height * width, force_full_load=True)
        model, device = loaded_module(source.patcher)
        step = chunk_size(batch, height, width, device, grid != "off")
        bar = comfy.utils.ProgressBar(batch)
        hints, previews, grids = [], [], []
        start = 0
        while start < batch:
            mm.throw_exception_if_processing_interrupted()
            part = images[start:start + step]
            try:
                x = part.to(device)
                hint = source(x)
                sheet = None
                if grid != "off":
                    sheet = to_image(group_grid(model, x, labels=grid == "labelled"))
            except _OOM:
                if step == 1:
                    raise
                step = max(1, step // 2)
                mm.soft_empty_cache(True)
                log.info("SCG: out of memory; retrying with %d images at a time", step)
                continue
            hints.append(to_image(hint))
            previews.append(to_image(minmax(hint)))
            if sheet is not None:
                grids.append(sheet)
            start += part.shape[0]
            bar.update(part.shape[0])
        hint = torch.cat(hints)
        grid_image = torch.cat(grids) if grids else torch.zeros(batch, 8, 8, 3, device=mm.intermediate_device())
        return io.NodeOutput(hint, torch.cat(previews), grid_image)

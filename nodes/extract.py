"""HypercolumnExtract: an image batch -> the SCG hint (as a canvas any apply node takes), a preview and a group sheet."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from ..scg_models import SCGError, minmax
from ..scg_models.geometry import HintGeometry, generation_size
from ..scg_models.grid import group_grid
from ..scg_models.imaging import fit
from .common import (
    CATEGORY,
    GAINS_TOOLTIP,
    MODULES_TOOLTIP,
    ScgAutoencoderType,
    check_autoencoder,
    image_to_nchw,
    loaded_module,
    log,
    plural,
    resolve_selection,
    to_image,
)

#: generous activation bytes per input pixel per fp32 value of one hint extraction (measured peak: see docs)
BYTES_PER_PIXEL = 4 * 40
MAX_CHUNK = 32
GRID_OPTIONS = ["labelled", "plain", "off"]
MAX_RESOLUTION = 16384
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
            description=("Runs the SCG autoencoder on an image batch fitted to a resolution (short side, like the "
                         "ControlNet preprocessors): the hint of the selected modules for an apply node (Apply "
                         "ControlNet, Apply Advanced ControlNet) with a ControlNet from 'Load SCG ControlNet', a "
                         "preview of it for viewing, and a sheet with every group of the autoencoder side by side."),
            inputs=[
                io.Image.Input("image", tooltip="Images to extract from (grey and RGBA are converted to RGB)."),
                ScgAutoencoderType.Input("scg_autoencoder", tooltip="The SCG autoencoder."),
                io.String.Input("modules", default="HC0", tooltip=MODULES_TOOLTIP),
                io.String.Input("gains", default="", tooltip=GAINS_TOOLTIP),
                io.Combo.Input("grid", options=GRID_OPTIONS, default="labelled",
                               tooltip="The group sheet: with group names, without, or off (skips the work; the "
                                       "grid output is then a small blank image)."),
                io.Int.Input("resolution", default=512, min=64, max=MAX_RESOLUTION, step=8, optional=True,
                             tooltip="The short side the image is fitted to (centre-cropped to a multiple of 8 "
                                     "on the long side), as the ControlNet preprocessors' resolution. Set it to the "
                                     "generation's short side: the hint then passes through apply nodes unchanged."),
            ],
            outputs=[
                io.Image.Output("hint", display_name="hint", tooltip="The hint for an apply node, at the "
                                "resolution's size, encoded into [0, 1] (0.5 is zero; the SCG ControlNet from 'Load SCG "
                                "ControlNet' decodes it). Not for viewing: use preview."),
                io.Image.Output("preview", display_name="preview", tooltip="The hint scaled to [0, 1] per image "
                                "and channel, for viewing (509x509 for 512x512)."),
                io.Image.Output("grid", display_name="grid", tooltip="Every group's preview side by side (the input "
                                "first), one sheet per image."),
            ],
        )

    @classmethod
    def execute(cls, image, scg_autoencoder, modules, gains, grid="labelled", resolution=512) -> io.NodeOutput:
        scg_ae = check_autoencoder(scg_autoencoder)
        ae = scg_ae.ae
        images = image_to_nchw(image, ae, "image")
        mods, gain_list = resolve_selection(ae, modules, gains)
        if grid not in GRID_OPTIONS:
            raise SCGError(f"grid: expected one of {', '.join(GRID_OPTIONS)}, got {grid!r}")
        if not isinstance(resolution, int) or not 64 <= resolution <= MAX_RESOLUTION:
            raise SCGError(f"resolution: expected a whole number from 64 to {MAX_RESOLUTION}, got {resolution!r}")
        batch = images.shape[0]
        height, width = generation_size(*images.shape[-2:], resolution)
        geometry = HintGeometry.of(ae)
        patcher = scg_ae.patcher(torch.float32)
        mm.load_models_gpu([patcher], memory_required=BYTES_PER_PIXEL * height * width, force_full_load=True)
        model, device = loaded_module(patcher)
        step = chunk_size(batch, height, width, device, grid != "off")
        bar = comfy.utils.ProgressBar(batch)
        canvases, previews, grids = [], [], []
        start = 0
        while start < batch:
            mm.throw_exception_if_processing_interrupted()
            part = images[start:start + step]
            try:
                x = fit(part.to(device), height, width)
                hint = model.hint(x, mods, gain_list)
                sheet = None if grid == "off" else group_grid(model, x, labels=grid == "labelled")
            except _OOM:
                if step == 1:
                    raise
                step = max(1, step // 2)
                mm.soft_empty_cache(True)
                log.info("SCG: out of memory; retrying with %s at a time", plural(step, "image"))
                continue
            try:
                canvases.append(to_image(geometry.to_canvas(hint, height, width, encode=True)))
            except SCGError as e:
                raise SCGError(f"gains/modules: {e}") from None
            previews.append(to_image(minmax(hint)))
            if sheet is not None:
                grids.append(to_image(sheet))
            start += part.shape[0]
            bar.update(part.shape[0])
        grid_image = torch.cat(grids) if grids else torch.zeros(batch, 8, 8, 3, device=mm.intermediate_device())
        return io.NodeOutput(torch.cat(canvases), torch.cat(previews), grid_image)

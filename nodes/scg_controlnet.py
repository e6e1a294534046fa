"""A core ControlNet that makes its own hint with the SCG autoencoder, once per sampling run.

How it fits ComfyUI's ``comfy.controlnet.ControlNet``:

* The hint is prepared where core prepares every hint: in ``get_control``, the first time
  it sees a latent size, through ``preprocess_image``. Core caches the result in
  ``cond_hint`` and re-prepares only when the latent size changes, so the autoencoder
  runs once per sampling run and resolution, never per step.
* The SCG hint is smaller than latent×8 (509×509 for 512×512: a stride-4 autoencoder
  with a 21×21 kernel), and the authors' hint block is built for that size (its stride-2
  convolutions round 509 up to 64). Core's cache check compares ``cond_hint`` with
  latent×8, so the hint is stored zero-padded to latent×8 (top-left corner) and the
  control model gets the exact hint back: :class:`ExactHintModel` crops the corner
  before calling the real model. The ControlNet therefore sees exactly
  ``ae.hint(image at latent×8)``, as in the authors' code.
* The autoencoder's ``ModelPatcher`` is in :meth:`get_models`, so the sampler loads it
  with the UNet and ControlNet and offloads it with them.
* :meth:`copy` keeps the class and the hint source, so core's apply logic (copies per
  conditioning, chaining through ``previous_controlnet``) works unchanged.
"""
from __future__ import annotations

import torch

import comfy.controlnet

from .common import HintSource


class ExactHintModel:
    """Stands in for the control model: crops the stored hint back to the SCG hint size.

    Everything else (``dtype``, attributes) is the real model's; the real model and its
    ``ModelPatcher`` stay shared with the ControlNet it came from, as core's copies do.
    """

    def __init__(self, model, source: HintSource):
        self.model, self.source = model, source

    @property
    def dtype(self):
        return self.model.dtype

    def __call__(self, *args, hint, **kwargs):
        h, w = self.source.output_size(*hint.shape[-2:])
        return self.model(*args, hint=hint[..., :h, :w], **kwargs)

    def __getattr__(self, name):
        if name in ("model", "source"):  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)


def compute_dtype(control_net: comfy.controlnet.ControlNet) -> torch.dtype:
    """The dtype the ControlNet computes in (its manual-cast dtype, else its weights')."""
    if control_net.manual_cast_dtype is not None:
        return control_net.manual_cast_dtype
    return control_net.control_model.dtype


class SCGControlNet(comfy.controlnet.ControlNet):
    """``comfy.controlnet.ControlNet`` whose hint is the SCG hint of ``cond_hint_original``."""

    def __init__(self, source: HintSource, control_model=None, **kwargs):
        super().__init__(control_model, **kwargs)
        self.scg_source = source
        self.preprocess_image = self._scg_hint

    @classmethod
    def wrap(cls, control_net: comfy.controlnet.ControlNet, source: HintSource) -> "SCGControlNet":
        """A new SCGControlNet sharing ``control_net``'s model and settings (never mutates it)."""
        model = control_net.control_model
        if isinstance(model, ExactHintModel):
            model = model.model
        c = cls(source, None, global_average_pooling=control_net.global_average_pooling,
                load_device=control_net.load_device, manual_cast_dtype=control_net.manual_cast_dtype)
        c.control_model = ExactHintModel(model, source)
        c.control_model_wrapped = control_net.control_model_wrapped
        control_net.copy_to(c)
        c.preprocess_image = c._scg_hint  # copy_to carried the source's preprocess_image over
        return c

    def copy(self) -> "SCGControlNet":
        return SCGControlNet.wrap(self, self.scg_source)

    def get_models(self):
        return super().get_models() + [self.scg_source.patcher]

    def _scg_hint(self, resized: torch.Tensor) -> torch.Tensor:
        """Core's hint-preparation hook; ``resized`` is core's latent×8 resize, used for its size.

        Returns B×3×(latent×8) with the SCG hint of the original image (fitted to latent×8)
        in its top-left corner and zeros elsewhere, on the autoencoder's device and dtype.
        """
        height, width = resized.shape[-2:]
        hint = self.scg_source(self.cond_hint_original, height, width)
        if tuple(hint.shape[-2:]) == (height, width):
            return hint
        out = hint.new_zeros(hint.shape[0], hint.shape[1], height, width)
        out[..., :hint.shape[-2], :hint.shape[-1]] = hint
        return out

"""How SCG rides on ComfyUI's ControlNet objects (core's, Advanced-ControlNet's, ...) through their own interface.

Nothing here subclasses or rebuilds a ControlNet object. Two pieces, both plain values a
ControlNet already takes:

* :class:`HintAdapter`, the SCG ControlNet's input stage, an ``nn.Module`` in front of the control
  model: it takes the hint *canvas* (:mod:`scg_models.geometry`: the generation size), crops it
  (and decodes it, for an encoded hint image) to the exact SCG hint (509 x 509 at 512 x 512, what the authors'
  hint block is built for), calls the control model, and stops the run when the control model's
  output is not finite. Hosts pass a canvas of the generation size through unchanged (core and
  Advanced-ControlNet resize a hint only when its size differs from latent x 8).
* :class:`SCGHint`, a ``preprocess_image`` hook: hosts call it on the hint they prepared for a
  latent size (once per sampling run and size; they cache the result), and it returns the canvas of
  the SCG hint of the original image fitted to that size.

A ControlNet copy carries both (its ``control_model`` and ``preprocess_image``), so host code that
copies, chains, masks or schedules ControlNets keeps working, and so does a multi-GPU deep clone:
the adapter is deep-copied with the control model, so clones share no weights; the autoencoder is
only read, makes the hint once on the main device, and the host moves it to each clone's device.
"""
from __future__ import annotations

import torch

from ..scg_models import SCGError
from ..scg_models.geometry import HintGeometry
from ..scg_models.imaging import fit
from .common import loaded_module


class HintAdapter(torch.nn.Module):
    """``control_model`` behind the SCG hint's input stage (no parameters of its own).

    encoded: the canvas is an encoded hint image (HypercolumnExtract's ``hint``, fed to any apply
    node). The adapter then asks the host for float32 inputs (its ``dtype``), so the encoding is
    decoded before the cast to ``compute_dtype`` that would otherwise round it (a host with a
    manual-cast ControlNet casts first: the hint then carries that dtype's rounding, 64 times its
    step at 1). Raw canvases (Apply SCG ControlNet) are cropped only.
    """

    def __init__(self, control_model: torch.nn.Module, geometry: HintGeometry, encoded: bool,
                 compute_dtype: torch.dtype):
        super().__init__()
        self.control_model = control_model
        self.geometry, self.encoded, self.compute_dtype = geometry, encoded, compute_dtype

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.encoded else self.control_model.dtype

    def forward(self, *args, hint: torch.Tensor, **kwargs):
        """``hint``: B x 3 x H x W canvas; everything else goes to the control model as given."""
        hint = self.geometry.from_canvas(hint, self.encoded)
        if self.encoded:
            def cast(t):
                return t.to(self.compute_dtype) if torch.is_tensor(t) and t.is_floating_point() else t

            hint, args, kwargs = cast(hint), [cast(a) for a in args], {k: cast(v) for k, v in kwargs.items()}
        control = self.control_model(*args, hint=hint, **kwargs)
        outputs = [t for ts in control.values() for t in ts if t is not None]
        if outputs and not bool(torch.stack([t.detach().abs().amax().float() for t in outputs]).isfinite().all()):
            raise SCGError("control_net: the ControlNet's output is not finite (NaN or inf); its weights or "
                           "the hint are broken")
        return control

    def extra_repr(self) -> str:
        return f"geometry={self.geometry}, encoded={self.encoded}, compute_dtype={self.compute_dtype}"


def control_module(control_model: torch.nn.Module) -> torch.nn.Module:
    """The control model behind any :class:`HintAdapter`."""
    return control_model.control_model if isinstance(control_model, HintAdapter) else control_model


def with_adapter(control_net, geometry: HintGeometry, encoded: bool) -> HintAdapter:
    """``control_net``'s control model behind an adapter (the one it has when that one fits)."""
    model = control_net.control_model
    dtype = compute_dtype(control_net)
    if isinstance(model, HintAdapter) and (model.geometry, model.encoded, model.compute_dtype) == (
            geometry, encoded, dtype):
        return model
    return HintAdapter(control_module(model), geometry, encoded, dtype)


class SCGHint:
    """``preprocess_image`` hook: a host's hint for one latent size -> the canvas of the SCG hint.

    images: B x 3 x H x W in [0, 1], checked. The autoencoder runs on its patcher's device and
    dtype (the sampler loads the patcher with the UNet: ``additional_models``). Holds no state
    that changes: copies of a ControlNet share it safely.
    """

    def __init__(self, images: torch.Tensor, patcher, modules: list[int], gains: list[float] | None,
                 geometry: HintGeometry):
        self.images, self.patcher, self.modules, self.gains, self.geometry = images, patcher, modules, gains, geometry

    def __call__(self, resized: torch.Tensor) -> torch.Tensor:
        """resized: the host's hint, B' x 3 x H x W (the images resized to latent x 8, nearest).

        Returns the B' x 3 x H x W canvas of ``ae.hint`` of the images fitted to H x W (antialiased),
        on the autoencoder's device and in its dtype. When the host picked other frames than the
        images (B' != B: Advanced-ControlNet's context windows), its resized frames are used.
        """
        height, width = resized.shape[-2:]
        images = fit(self.images, height, width) if resized.shape[0] == self.images.shape[0] else resized
        ae, device = loaded_module(self.patcher)
        hint = ae.hint(images.to(device), self.modules, self.gains)
        try:
            return self.geometry.to_canvas(hint, height, width, encode=False)
        except SCGError as e:
            raise SCGError(f"gains/modules: {e}") from None


def compute_dtype(control_net) -> torch.dtype:
    """The dtype the ControlNet computes in (its manual-cast dtype, else its weights')."""
    if getattr(control_net, "manual_cast_dtype", None) is not None:
        return control_net.manual_cast_dtype
    return control_module(control_net.control_model).dtype

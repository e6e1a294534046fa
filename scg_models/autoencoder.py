"""The modular autoencoder: one convolution encodes, its transpose (tied weights) decodes.

Module ``i`` owns channels ``i*vector_length ... (i+1)*vector_length-1``. The hint for a
module selection is ``decode(encode(normalise(x)) * mask * gains)``: un-normalised,
3x509x509 for a 512x512 input with the released model, exactly as the authors'
``HyperColumnLGN.forward``.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SCGError
from .geometry import HintGeometry
from .gonlin import GONLINS, Gonlin
from .groups import default_groups, parse_gains, resolve_modules, validate_groups
from .ops import conv2d_polyphase, conv_transpose2d_full

#: Input normalisation of the released model (CIFAR-100 statistics, as the authors use them).
AUTHORS_MEAN = (0.50705882, 0.48666667, 0.44078431)
AUTHORS_STD = (0.26745098, 0.25568627, 0.27607843)
ACTIVATIONS = (None, "gelu", "relu")


@dataclasses.dataclass
class AutoencoderConfig:
    """Everything that defines a modular autoencoder besides its weights."""

    gonlin: str = "Bipolar"
    n_vector: int = 16
    vector_length: int = 4
    stride: int = 4
    padding: int | None = None  # None: (K-1)//2, as the authors derive it
    kernel_size: int | None = None  # Vanilla only; the other gonlins fix it
    activation: str | None = None
    mean: tuple[float, float, float] = AUTHORS_MEAN
    std: tuple[float, float, float] = AUTHORS_STD
    #: None: the authors' ten groups for 16 modules, else one group per module
    groups: list[dict] | None = None
    #: provenance (source format, training command, data, steps...), kept as given
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        """A config from its JSON form (file metadata): every field checked, see :meth:`validate`."""
        if not isinstance(d, dict):
            raise SCGError(f"autoencoder config: expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SCGError(f"autoencoder config: unknown field(s) {unknown[:8]}")
        d = dict(d)
        for k in ("mean", "std"):
            if k in d:
                d[k] = _triple(k, d[k])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check every field before anything is allocated; :class:`SCGError` names the field.

        Bounds (generous: the released model is Bipolar 16x4, stride 4, 4 400 parameters):
        ``n_vector`` 1..MAX_VECTORS, ``vector_length`` 1..MAX_VECTOR_LENGTH, channels at most
        MAX_CHANNELS, ``stride`` 1..MAX_STRIDE, Vanilla ``kernel_size`` odd 1..MAX_KERNEL, ``padding``
        0..K-1, at most MAX_PARAMETERS weights; ``mean`` finite in [-10, 10] and ``std`` in [1e-3, 1e3]
        (inputs are images in [0, 1]: outside these the normalised input is garbage or overflows).
        """
        if self.gonlin not in GONLINS:
            raise SCGError(f"gonlin: unknown factorisation {self.gonlin!r}; known: {', '.join(GONLINS)}")
        if self.activation not in ACTIVATIONS:
            raise SCGError(f"activation: {self.activation!r} is not one of {ACTIVATIONS}")
        nv = _int_field("n_vector", self.n_vector, 1, MAX_VECTORS)
        vl = _int_field("vector_length", self.vector_length, 1, MAX_VECTOR_LENGTH)
        if nv * vl > MAX_CHANNELS:
            raise SCGError(f"n_vector x vector_length: {nv} x {vl} = {nv * vl} channels; at most {MAX_CHANNELS}")
        _int_field("stride", self.stride, 1, MAX_STRIDE)
        k = 21
        if self.gonlin == "Vanilla":
            k = 21 if self.kernel_size is None else _int_field("kernel_size", self.kernel_size, 1, MAX_KERNEL)
        elif self.kernel_size is not None:
            _int_field("kernel_size", self.kernel_size, 1, MAX_KERNEL)  # fixed by the gonlin; only sanity-checked
        if self.gonlin == "Vanilla":
            k_real = k
        else:
            k_real = {"Bipolar_ks3": 15, "Vanilla_2layer": 13, "Vanilla_2layer_nogroup": 13}.get(self.gonlin, 21)
        if self.padding is not None:
            _int_field("padding", self.padding, 0, k_real - 1)
        params = _parameter_count(self.gonlin, nv, vl, k_real)
        if params > MAX_PARAMETERS:
            raise SCGError(f"n_vector/vector_length/kernel_size: {self.gonlin} {nv}x{vl} would hold {params} "
                           f"weights; at most {MAX_PARAMETERS}")
        for name, lo, hi in (("mean", -10.0, 10.0), ("std", 1e-3, 1e3)):
            for i, v in enumerate(_triple(name, getattr(self, name))):
                if not (math.isfinite(v) and lo <= v <= hi):
                    raise SCGError(f"{name}[{i}]: {v!r} is not a finite number in [{lo:g}, {hi:g}]")
        if self.groups is not None and not isinstance(self.groups, (list, tuple)):
            raise SCGError(f"groups: expected a list of {{name, modules, description}}, got {type(self.groups).__name__}")
        if not isinstance(self.info, dict):
            raise SCGError(f"info: expected a JSON object, got {type(self.info).__name__}")


#: bounds of :meth:`AutoencoderConfig.validate`
MAX_VECTORS, MAX_VECTOR_LENGTH, MAX_CHANNELS, MAX_STRIDE, MAX_KERNEL = 1024, 256, 4096, 32, 63
MAX_PARAMETERS = 1 << 24


def _int_field(name: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise SCGError(f"{name}: expected an integer in {lo}..{hi}, got {v!r}")
    if not lo <= v <= hi:
        raise SCGError(f"{name}: {v!r} is out of range; expected an integer in {lo}..{hi}")
    return int(v)


def _triple(name: str, v) -> tuple[float, float, float]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 3:
        raise SCGError(f"{name}: expected 3 numbers (R, G, B), got {v!r}"[:200])
    try:
        return tuple(float(x) for x in v)
    except (TypeError, ValueError, OverflowError):
        raise SCGError(f"{name}: expected 3 numbers (R, G, B), got {v!r}"[:200]) from None


def _parameter_count(gonlin: str, nv: int, vl: int, k: int) -> int:
    c = nv * vl
    return {"Vanilla": c * 3 * k * k, "Vanilla_2layer": nv * 75 + c * 25,
            "Vanilla_2layer_nogroup": nv * 75 + c * nv * 25}.get(gonlin, 2 * nv * 75 + nv * 25 + c * 25 + 6 * nv)


#: largest composite-kernel entry a loaded autoencoder may have. The released model peaks at 0.27 and
#: its hints at about 2; a hint grows with the square of the kernel, so 100 already means hints near
#: 1e5 (beyond fp16). Only a corrupt or hostile file goes further (weights x1e15 overflow to inf).
MAX_KERNEL_ABS = 100.0
#: largest factor weight (the released model's peak at 0.61); the hint path runs the factor cascade
#: on them directly, so one huge factor overflows there even when the composite kernel stays small
MAX_WEIGHT_ABS = 1000.0


class ModularAutoencoder(nn.Module):
    """SCG's modular autoencoder.

    Attributes: ``n_vector`` modules of ``vector_length`` channels, ``kernel_size``,
    ``stride``, ``padding``, ``groups`` (ordered name -> module indices) and
    ``group_descriptions``.
    """

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        cfg = config or AutoencoderConfig()
        cfg.validate()
        cfg.mean, cfg.std = _triple("mean", cfg.mean), _triple("std", cfg.std)
        kw = {"kernel_size": int(cfg.kernel_size or 21)} if cfg.gonlin == "Vanilla" else {}
        self.gonlin: Gonlin = GONLINS[cfg.gonlin](cfg.n_vector, cfg.vector_length, 3, **kw)
        self.n_vector, self.vector_length = int(cfg.n_vector), int(cfg.vector_length)
        self.n_channels = self.n_vector * self.vector_length
        self.kernel_size = self.gonlin.kernel_size
        self.stride = int(cfg.stride)
        self.padding = (self.kernel_size - 1) // 2 if cfg.padding is None else int(cfg.padding)
        if cfg.groups is None:
            cfg.groups = default_groups(self.n_vector)
        cfg.groups = validate_groups(cfg.groups, self.n_vector)
        cfg.kernel_size, cfg.padding = self.kernel_size, self.padding
        self.config = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        self._kernel_cache: tuple | None = None

    # --- groups -----------------------------------------------------------------------
    @property
    def groups(self) -> OrderedDict[str, list[int]]:
        return OrderedDict((g["name"], list(g["modules"])) for g in self.config.groups)

    @property
    def group_descriptions(self) -> dict[str, str]:
        return {g["name"]: g["description"] for g in self.config.groups}

    def check_weights(self, name: str = "autoencoder") -> None:
        """Refuse weights that make every hint garbage: non-finite, a factor beyond :data:`MAX_WEIGHT_ABS`,
        or a composite kernel beyond :data:`MAX_KERNEL_ABS`. :class:`SCGError` names the factor."""
        params = {key: p.detach() for key, p in self.named_parameters()}
        for key, p in params.items():
            if not torch.isfinite(p).all():
                raise SCGError(f"{name}: non-finite values in {key}")
            top = float(p.abs().max()) if p.numel() else 0.0
            if top > MAX_WEIGHT_ABS:  # the factor cascade computes with these directly: inf * 0 = NaN
                raise SCGError(f"{name}: weights out of range: {key} reaches {top:.3g} (a trained autoencoder's "
                               f"weights stay below {MAX_WEIGHT_ABS:g})")
        with torch.no_grad():
            peak = float(self.kernel().float().abs().max())
        if not peak <= MAX_KERNEL_ABS:
            key, p = max(params.items(), key=lambda kv: float(kv[1].abs().max()))
            raise SCGError(f"{name}: weights out of range: the composite kernel reaches {peak:.3g} (a trained "
                           f"autoencoder stays below {MAX_KERNEL_ABS:g}); largest value {float(p.abs().max()):.3g} "
                           f"in {key}")

    def set_groups(self, groups: list[dict]) -> None:
        """Replace the groups (entries ``{name, modules, description}``)."""
        self.config.groups = validate_groups(groups, self.n_vector)

    def resolve_modules(self, modules) -> list[int]:
        """A group name, ``"HC2+HC3"``, ``"0,1,4"``, ``"all"`` or ints -> module indices."""
        return resolve_modules(modules, self.groups, self.n_vector)

    def channels(self, modules: list[int]) -> list[int]:
        """Feature channels owned by ``modules`` (module i -> i*vl ... i*vl+vl-1)."""
        vl = self.vector_length
        return [m * vl + k for m in modules for k in range(vl)]

    # --- the model, differentiable (training and reference) ----------------------------
    def kernel(self) -> torch.Tensor:
        """Composite kernel, n_channelsx3xKxK (differentiable; the authors' ``get_weight``)."""
        return self.gonlin.kernel()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW in [0, 1] -> normalised input."""
        return (images - self.mean.to(images)) / self.std.to(images)

    def activate(self, f: torch.Tensor) -> torch.Tensor:
        act = self.config.activation
        return f if act is None else F.gelu(f) if act == "gelu" else F.relu(f)

    def encode(self, x: torch.Tensor, modules=None, normalize: bool = True) -> torch.Tensor:
        """Features, Bx(vl*|S|)xhxw (all modules when ``modules`` is None).

        x: Bx3xHxW, images in [0, 1] (``normalize=True``) or already normalised.
        """
        w = self.kernel()
        if modules is not None:
            w = w[self.channels(self.resolve_modules(modules))]
        x = self.normalize(x) if normalize else x
        return self.activate(F.conv2d(x, w.to(x.dtype), stride=self.stride, padding=self.padding))

    def decode(self, features: torch.Tensor, modules=None) -> torch.Tensor:
        """Tied transposed convolution: Bx(vl*|S|)xhxw -> Bx3xH'xW' (normalised space)."""
        w = self.kernel()
        if modules is not None:
            w = w[self.channels(self.resolve_modules(modules))]
        return F.conv_transpose2d(features, w.to(features.dtype), stride=self.stride, padding=self.padding)

    def decode_per_module(self, features: torch.Tensor) -> torch.Tensor:
        """All-module features BxCxhxw -> per-module reconstructions Bxn_vectorx3xH'xW'."""
        w = self.kernel().to(features.dtype)
        out = F.conv_transpose2d(features, w, stride=self.stride, padding=self.padding, groups=self.n_vector)
        return out.unflatten(1, (self.n_vector, 3))

    # --- inference: the hint, computing only what the selection needs -----------------
    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Hint size for an HxW input (509x509 for 512x512 with the released model)."""
        return HintGeometry.of(self).hint_size(height, width)

    def check_images(self, images, name: str = "images") -> torch.Tensor:
        """Validate a Bx3xHxW batch in [0, 1]; raise :class:`SCGError` naming the problem."""
        if not isinstance(images, torch.Tensor):
            raise SCGError(f"{name}: expected a torch.Tensor Bx3xHxW, got {type(images).__name__}")
        if images.dim() != 4:
            raise SCGError(f"{name}: expected 4 dims Bx3xHxW, got shape {tuple(images.shape)}"
                           + (" (add a batch dimension: images[None])" if images.dim() == 3 else ""))
        c = images.shape[1]
        if c != 3:
            if images.shape[-1] in (1, 3, 4) and c not in (1, 4):
                raise SCGError(f"{name}: shape {tuple(images.shape)} looks like BxHxWxC (channels last); "
                               "pass images.permute(0, 3, 1, 2)")
            hint = {1: "grey: repeat it to RGB (images.expand(-1, 3, -1, -1))",
                    4: "RGBA: drop alpha (images[:, :3]) or composite it first"}.get(c, "")
            raise SCGError(f"{name}: expected 3 (RGB) channels, got {c}" + (f"; {hint}" if hint else ""))
        if not images.is_floating_point():
            raise SCGError(f"{name}: expected floats in [0, 1], got {images.dtype} (divide by 255)")
        k = self.kernel_size
        if min(images.shape[-2:]) < k:
            raise SCGError(f"{name}: {images.shape[-2]}x{images.shape[-1]} is smaller than the "
                           f"{k}x{k} kernel; use images of at least {k}x{k}")
        lo, hi = (float(v) for v in torch.aminmax(images)) if images.numel() else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):  # one pass: min/max propagate NaN and +/-inf
            raise SCGError(f"{name}: contains NaN or infinite values")
        if lo < -0.5 or hi > 1.5:
            raise SCGError(f"{name}: values must lie in [0, 1]; got [{lo:.3g}, {hi:.3g}]"
                           + (" (0..255 data? divide by 255)" if hi > 2 else ""))
        return images

    def _composite(self) -> torch.Tensor:
        """Composite kernel for inference, composed once per weights (cached)."""
        # inference tensors (weights loaded under torch.inference_mode, as in ComfyUI) keep no version counter
        key = tuple((p.data_ptr(), 0 if p.is_inference() else p._version, p.dtype, p.device)
                    for p in self.parameters())
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            with torch.no_grad():
                self._kernel_cache = (key, self.kernel().detach())
        return self._kernel_cache[1]

    @torch.no_grad()
    def hint(self, images: torch.Tensor, modules, gains=None) -> torch.Tensor:
        """The ControlNet hint of a module selection.

        images: Bx3xHxW in [0, 1], finite, at least the kernel size: trusted, not checked here (check
        them where they enter, with :meth:`check_images`). modules: see :meth:`resolve_modules`. gains:
        see :func:`scg_models.groups.parse_gains`. Returns Bx3xhxw (:meth:`output_size`),
        un-normalised, in the model's dtype. No gradient. Only the selected modules'
        channels are encoded and decoded.
        """
        mods = self.resolve_modules(modules)
        gains = parse_gains(gains, mods, self.n_vector, self.groups)
        p = next(self.parameters())
        x = self.normalize(images.to(device=p.device, dtype=p.dtype))
        H, W = x.shape[-2:]
        out_h, out_w = self.output_size(H, W)
        cascade = self.gonlin.cascade_stride == self.stride
        if cascade:
            f = self.gonlin.cascade_encode(F.pad(x, (self.padding,) * 4), mods)
        else:
            w = self._composite()[self.channels(mods)]
            f = conv2d_polyphase(x, w, self.stride, self.padding)
        f = self.activate(f)
        if gains is not None:
            g = torch.tensor(gains, dtype=f.dtype, device=f.device).repeat_interleave(self.vector_length)
            f = f * g.view(1, -1, 1, 1)
        if cascade:
            y = self.gonlin.cascade_decode(f, mods)
        else:
            y = conv_transpose2d_full(f, w, stride=self.stride)
        p0 = self.padding
        return y[..., p0:p0 + out_h, p0:p0 + out_w]

    @torch.no_grad()
    def preview(self, images: torch.Tensor, modules, gains=None, eps: float = 1e-6) -> torch.Tensor:
        """The hint min-max scaled per image and channel to [0, 1] (Bx3xhxw); images trusted as in :meth:`hint`.

        A channel whose range is below ``eps`` (near-constant) shows as 0.5, not noise.
        """
        return minmax(self.hint(images, modules, gains), eps)

    def extra_repr(self) -> str:
        c = self.config
        return (f"gonlin={c.gonlin}, modules={self.n_vector}x{self.vector_length}, kernel={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={list(self.groups)}")


def minmax(hint: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per image and channel min-max scaling of BxCxHxW to [0, 1]; near-constant -> 0.5."""
    h = hint.float()
    lo = h.amin(dim=(-2, -1), keepdim=True)
    rng = h.amax(dim=(-2, -1), keepdim=True) - lo
    scale = torch.where(rng > eps, rng, torch.ones_like(rng))
    return torch.where(rng > eps, (h - lo) / scale, torch.full_like(h, 0.5)).clamp_(0, 1)


def trainable_parameter_count(ae: ModularAutoencoder) -> int:
    return sum(p.numel() for p in ae.parameters() if p.requires_grad)


__all__ = ["AutoencoderConfig", "ModularAutoencoder", "AUTHORS_MEAN", "AUTHORS_STD", "minmax",
           "trainable_parameter_count"]

"""Reading and writing every file a user brings; formats are detected from content and keys.

* Ours: ``.safetensors`` with the autoencoder weights (``gonlin.*``) and its config as
  JSON in the metadata key ``scg_autoencoder``.
* The authors' autoencoder ``.pth``: ``{'arg': argparse.Namespace, 'state_dict': {...}}``,
  factor weights under ``lgn_ende.0.conv.*``.
* The authors' SCG ControlNet ``.ckpt`` (PyTorch Lightning): the whole ControlLDM; the
  autoencoder sits under ``control_model.input_hint_block_new.0.lgn_ende.conv.*``.
* Our converted ControlNet ``.safetensors``: ComfyUI's ldm ControlNet layout plus the
  autoencoder under ``scg_autoencoder.*`` (ComfyUI's own loader ignores those keys).
"""
from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .autoencoder import AutoencoderConfig, ModularAutoencoder
from .errors import CheckpointError, FileWriteError, NoControlNetError, SCGError
from .files import TEMP_SUFFIX, atomic_write  # noqa: F401  (TEMP_SUFFIX re-exported)
from .safe_pickle import safe_load

META_KEY = "scg_autoencoder"
CONTROLNET_META_KEY = "scg_controlnet"
AE_PREFIX = "scg_autoencoder."
AUTHORS_AE_PREFIXES = ("lgn_ende.0.conv.", "module.lgn_ende.0.conv.")
CKPT_AE_PREFIXES = ("control_model.input_hint_block_new.0.lgn_ende.conv.", "control_model.hypercolumn.lgn_ende.conv.")
_HINT_NEW = re.compile(r"^input_hint_block_new\.(\d+)\.(.+)$")


# --- reading raw files -----------------------------------------------------------------
def _kind(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            size = os.fstat(fh.fileno()).st_size
            n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
            if head[8:9] == b"{" and n + 8 <= size:
                fh.seek(8)
                try:
                    json.loads(fh.read(n) if n < 1 << 27 else b"")
                    return "safetensors"
                except (ValueError, RecursionError):
                    pass
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open ({e.strerror or e})") from None
    if len(head) < 8:
        raise CheckpointError(f"{path}: empty or truncated file ({size} bytes)")
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pickle"
    if head[8:9] == b"{":
        if n + 8 <= size:
            raise CheckpointError(f"{path}: corrupt safetensors file (its {n}-byte header is not valid JSON)")
        raise CheckpointError(f"{path}: truncated safetensors file (header says {n + 8}+ bytes, file has {size})")
    raise CheckpointError(f"{path}: unknown file format (neither safetensors nor a PyTorch checkpoint)")


@dataclass
class RawFile:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    arg: object | None = None  # the authors' argparse.Namespace, if any


def read_file(path: str) -> RawFile:
    """Tensors (and metadata / the authors' ``arg``) of a checkpoint, loaded safely on the CPU."""
    path = os.fspath(path)
    if _kind(path) == "safetensors":
        try:
            from safetensors import safe_open

            with safe_open(path, "pt") as fh:
                meta = fh.metadata() or {}
            return RawFile(load_file(path), dict(meta))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors file ({e})") from None
    obj = safe_load(path)
    arg = None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        arg = obj.get("arg")
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    tensors = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        if isinstance(k, bool) or not isinstance(k, (str, int)):
            raise CheckpointError(f"{path}: state dict key of type {type(k).__name__} (keys are names); refused")
        tensors[str(k)] = v
    return RawFile(tensors, {}, arg)


# --- the autoencoder -------------------------------------------------------------------
def _strip(tensors: Mapping[str, torch.Tensor], prefixes) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        found = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if found:
            return found
    return {}


def _arg_value(arg, name, default=None):
    v = getattr(arg, name, default)
    if isinstance(v, (list, tuple)):
        if len(v) != 1:
            raise CheckpointError(f"arg.{name}: expected one value, got {len(v)}")
        v = v[0]
    return v


def _arg_int(arg, name, default=None):
    v = _arg_value(arg, name, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise CheckpointError(f"arg.{name}: expected an integer, got {v!r}"[:200])
    return v


def _infer_config(factors: Mapping[str, torch.Tensor], path: str, arg=None) -> AutoencoderConfig:
    """Config of an authors'-format autoencoder from its factor shapes (and ``arg``)."""
    def shape(k):
        t = factors.get(k)
        if t is None:
            return None
        if t.dim() != 4 or min(t.shape) < 1:
            raise CheckpointError(f"weight {k!r} has shape {tuple(t.shape)}; expected 4 non-empty dims "
                                  "(out, in, kH, kW)")
        return tuple(t.shape)

    named = _arg_value(arg, "gonlin") if arg is not None else None
    first = shape("c1_1.weight") or shape("c1_2_1.weight")
    if shape("c0_1.weight") or shape("c0_2.weight"):
        gonlin, nv = "Bipolar_1x1", (shape("c0_1.weight") or shape("c0_2.weight"))[0]
    elif first:
        gonlin, nv = ("Bipolar_ks3" if first[-1] == 3 else "Bipolar"), first[0]
    elif shape("c1.weight") and shape("c2.weight"):
        nv = shape("c1.weight")[0]
        gonlin = "Vanilla_2layer" if shape("c2.weight")[1] == 1 else "Vanilla_2layer_nogroup"
    elif shape("c1.weight"):
        gonlin, nv = "Vanilla", None
    else:
        raise CheckpointError(f"no autoencoder factor weights found (expected c1_1/c1_2_1/c1_2_2/c2 "
                              f"or c1/c2); keys: {sorted(factors)[:8]}")
    if named is not None and named != gonlin:
        raise CheckpointError(f"arg.gonlin is {named!r} but the weights are shaped like {gonlin!r}")
    cfg = {"gonlin": gonlin}
    if arg is not None:
        rn = _arg_int(arg, "rot_num", 1)
        rn = 1 if rn is None else rn
        if rn < 1:
            raise CheckpointError(f"arg.rot_num: {rn} is not a positive integer")
        nv_arg, vl_arg = _arg_int(arg, "n_vector"), _arg_int(arg, "vector_length")
        if nv_arg is not None and vl_arg is not None:
            cfg["n_vector"], cfg["vector_length"] = nv_arg // rn, vl_arg * rn
        if _arg_value(arg, "lgn_stride") is not None:
            cfg["stride"] = _arg_int(arg, "lgn_stride")
        cfg["activation"] = _arg_value(arg, "activate_fn")
        if gonlin == "Vanilla" and _arg_value(arg, "lgn_kernel_size") is not None:
            cfg["kernel_size"] = _arg_int(arg, "lgn_kernel_size")
    total = (shape("c2.weight") or shape("c1.weight") or (nv * 4,))[0]
    if "n_vector" not in cfg:
        nv = nv or max(total // 4, 1)
        cfg["n_vector"], cfg["vector_length"] = nv, max(total // nv, 1)
    if gonlin == "Vanilla":
        cfg.setdefault("kernel_size", shape("c1.weight")[-1])
    cfg["info"] = {"source_format": "authors_pth" if arg is not None else "authors_ckpt",
                   "source_file": os.path.basename(path)}
    config = AutoencoderConfig(**cfg)
    config.validate()
    return config


#: dtypes an autoencoder file may store its weights in
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def autoencoder_from_state_dict(factors: Mapping[str, torch.Tensor], config: AutoencoderConfig,
                                path: str = "state dict") -> ModularAutoencoder:
    """Build the autoencoder and load its weights strictly: every key present, every shape right."""
    ae = ModularAutoencoder(config)
    expected = ae.state_dict()
    given = {k if k.startswith("gonlin.") else "gonlin." + k: v for k, v in factors.items()
             if not k.endswith("eye")}
    missing = [k for k in expected if k not in given]
    if missing:
        raise CheckpointError(f"{path}: weight {missing[0]!r} is missing for gonlin {config.gonlin!r}")
    for k, v in expected.items():
        t = given[k]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: weight {k!r} is a {type(t).__name__}, not a tensor")
        if t.is_meta:
            raise CheckpointError(f"{path}: weight {k!r} is a meta tensor (a shape without data); the file was saved "
                                  "from a model that was never materialised")
        if t.dtype not in WEIGHT_DTYPES:
            raise CheckpointError(f"{path}: weight {k!r} has dtype {t.dtype}; expected fp16, bf16, fp32 or fp64"
                                  + (" (convert fp8 weights to fp16 first)" if t.dtype.itemsize == 1
                                     and t.is_floating_point() else ""))
        if tuple(t.shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: weight {k!r} has shape {tuple(t.shape)}, "
                                  f"expected {tuple(v.shape)} for {config.gonlin} "
                                  f"{config.n_vector}x{config.vector_length}")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: non-finite values in {k}")
    ae.load_state_dict({k: given[k].float() for k in expected})
    try:
        ae.check_weights(path)
    except SCGError as e:
        raise CheckpointError(str(e)) from None
    return ae


def _config_of(factors, path: str, arg=None) -> AutoencoderConfig:
    try:
        return _infer_config(factors, path, arg)
    except SCGError as e:
        raise CheckpointError(f"{path}: {e}") from None


def has_autoencoder(raw: RawFile) -> bool:
    """Whether a file carries autoencoder weights (in any supported layout), valid or not."""
    prefixes = (AE_PREFIX, *AUTHORS_AE_PREFIXES, *CKPT_AE_PREFIXES)
    return META_KEY in raw.metadata or any(k.startswith(prefixes) for k in raw.tensors)


def autoencoder_from_raw(raw: RawFile, path: str) -> ModularAutoencoder:
    """The autoencoder in any supported file, or a :class:`CheckpointError`."""
    t = raw.tensors
    if META_KEY in raw.metadata:
        try:
            cfg = AutoencoderConfig.from_dict(json.loads(raw.metadata[META_KEY]))
        except (ValueError, TypeError, RecursionError) as e:  # SCGError is a ValueError
            raise CheckpointError(f"{path}: bad {META_KEY} metadata: {e}") from None
        factors = _strip(t, (AE_PREFIX,)) or {k: v for k, v in t.items() if k.startswith("gonlin.")}
        return autoencoder_from_state_dict(factors, cfg, path)
    factors = _strip(t, AUTHORS_AE_PREFIXES)
    if factors:
        if raw.arg is None:
            raise CheckpointError(f"{path}: authors' autoencoder weights without their 'arg' namespace")
        return autoencoder_from_state_dict(factors, _config_of(factors, path, raw.arg), path)
    factors = _strip(t, CKPT_AE_PREFIXES)
    if factors:
        return autoencoder_from_state_dict(factors, _config_of(factors, path), path)
    raise CheckpointError(f"{path}: no SCG autoencoder in this file (not our .safetensors, not the authors' "
                          f".pth or SCG ControlNet .ckpt); first keys: {sorted(t)[:5]}")


def load_autoencoder(path, device=None, dtype=None) -> ModularAutoencoder:
    """Load an autoencoder from any supported file, in eval mode with frozen weights.

    Files in the authors' formats get :data:`scg_models.AUTHORS_GROUPS`.
    """
    path = os.fspath(path)
    ae = autoencoder_from_raw(read_file(path), path)
    return ae.to(device=device, dtype=dtype).eval().requires_grad_(False)


#: suffix of the temporary file a save writes first; never a model extension, so no loader lists it
def _atomic_save(tensors: dict, path: str, metadata: dict[str, str]) -> None:
    """Write a safetensors file through :func:`atomic_write`; on any failure nothing is left.

    A full disk (or any OSError) becomes a :class:`FileWriteError` naming ``path``.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    seen: set[int] = set()
    for k, v in tensors.items():  # safetensors stores no shared memory: a tensor sharing it gets its own copy
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            tensors[k] = v.clone()
        seen.add(ptr)

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the writer makes 0600; a model file is as readable as any other

    try:
        atomic_write(path, write)
    except OSError as e:
        raise FileWriteError(f"{path}: cannot write ({e.strerror or e}); nothing was written") from None
    except SafetensorError as e:  # the Rust writer reports I/O errors (a full disk) this way
        raise FileWriteError(f"{path}: cannot write ({e}); nothing was written") from None


def autoencoder_metadata(ae: ModularAutoencoder, info: dict | None = None) -> dict[str, str]:
    cfg = ae.config.to_dict()
    cfg["info"] = {**cfg.get("info", {}), **(info or {})}
    return {META_KEY: json.dumps(cfg), "format": "scg_autoencoder", "format_version": "1"}


def save_autoencoder(ae: ModularAutoencoder, path, info: dict | None = None) -> None:
    """Write ``ae`` in our format (weights in fp32, config in the metadata), atomically."""
    _atomic_save({k: v.float() for k, v in ae.state_dict().items()}, path, autoencoder_metadata(ae, info))


# --- the SCG ControlNet ----------------------------------------------------------------
@dataclass
class ControlNetFile:
    """A ControlNet state dict in ComfyUI's ldm layout (no prefix) and its autoencoder."""

    state_dict: dict[str, torch.Tensor]
    autoencoder: ModularAutoencoder | None
    metadata: dict[str, str]


def controlnet_state_dict(tensors: Mapping[str, torch.Tensor], path: str = "state dict") -> dict[str, torch.Tensor]:
    """The authors' ``control_model.*`` keys -> ComfyUI's layout.

    ``input_hint_block_new.{k}`` -> ``input_hint_block.{k-1}`` (k >= 1); index 0 (the
    autoencoder) and ``hypercolumn.*`` are dropped; ``model.*``, ``first_stage_model.*`` and
    ``cond_stage_model.*`` are ignored. Keys already in ComfyUI's layout pass through.
    """
    out = {}
    for key, v in tensors.items():
        if key.startswith(AE_PREFIX):
            continue
        if key.startswith("control_model."):
            key = key[len("control_model."):]
        elif key.split(".")[0] in ("model", "first_stage_model", "cond_stage_model", "model_ema"):
            continue
        if key.startswith("hypercolumn."):
            continue
        m = _HINT_NEW.match(key)
        if m:
            if int(m.group(1)) == 0:
                continue
            key = f"input_hint_block.{int(m.group(1)) - 1}.{m.group(2)}"
        out[key] = v
    for need in ("input_hint_block.0.weight", "zero_convs.0.0.weight"):
        if need not in out:
            raise NoControlNetError(f"{path}: no ControlNet found ({need!r} missing after conversion)")
    return out


def load_controlnet_file(path, check_tensors: bool = True) -> ControlNetFile:
    """An authors' SCG ControlNet ``.ckpt`` or our converted file -> :class:`ControlNetFile`.

    ``check_tensors=False`` leaves :func:`check_controlnet_tensors` to the caller (who first checks
    the architecture from the shapes, say); the embedded autoencoder is always checked.
    """
    path = os.fspath(path)
    raw = read_file(path)
    sd = controlnet_state_dict(raw.tensors, path)
    if check_tensors:
        check_controlnet_tensors(sd, path)
    ae = autoencoder_from_raw(raw, path) if has_autoencoder(raw) else None  # one it holds must be valid
    return ControlNetFile(sd, ae, dict(raw.metadata))


def check_controlnet_tensors(sd: Mapping[str, torch.Tensor], path: str) -> None:
    """Every ControlNet weight holds data (not meta) and finite numbers (fp8 is allowed, as ComfyUI loads it)."""
    for k, v in sd.items():
        if v.is_meta:
            raise CheckpointError(f"{path}: {k!r} is a meta tensor (a shape without data)")
        if v.is_floating_point() and not torch.isfinite(v if v.dtype.itemsize > 1 else v.to(torch.float16)).all():
            raise CheckpointError(f"{path}: non-finite values in {k}")


def save_controlnet(cn: ControlNetFile, path, dtype: torch.dtype | None = None, info: dict | None = None) -> None:
    """Write a converted ControlNet (optionally cast), with its autoencoder embedded, atomically."""
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise SCGError(f"dtype: {dtype} is not fp16, bf16 or fp32")
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in cn.state_dict.items()}
    meta = {CONTROLNET_META_KEY: json.dumps(info or {})}
    if cn.autoencoder is not None:
        tensors.update({AE_PREFIX + k: v.float() for k, v in cn.autoencoder.state_dict().items()})
        meta.update(autoencoder_metadata(cn.autoencoder))
    _atomic_save(tensors, path, meta)


# --- the any-subset SCG ControlNet -------------------------------------------------------
#: the marker of an any-subset ControlNet file: this key in the JSON of the ``scg_controlnet``
#: metadata (:data:`CONTROLNET_META_KEY`), holding ``{"n_vector": N, "version": 1, ...}``
ANY_SUBSET_META_KEY = "any_subset"
ANY_SUBSET = "any_subset"
PER_GROUP = "per_group"


def _any_subset_marker(cn: ControlNetFile):
    """The marker's value, or None when the file has none (the ``scg_controlnet`` JSON may be absent
    or not an object: then there is no marker)."""
    try:
        info = json.loads(cn.metadata.get(CONTROLNET_META_KEY, "{}"))
    except ValueError:
        return None
    return info.get(ANY_SUBSET_META_KEY) if isinstance(info, dict) else None


def controlnet_kind(cn: ControlNetFile, path: str = "ControlNet") -> str:
    """``"per_group"`` (a 3-channel hint block: the authors' files and ours) or ``"any_subset"``
    (hint block input 3 + n_vector and the :data:`ANY_SUBSET_META_KEY` marker in the
    ``scg_controlnet`` metadata). Anything in
    between (a wide hint block without the marker, or the marker on a file whose widths do not
    fit its autoencoder) is a :class:`CheckpointError`."""
    from .subsets import input_channels

    weight = cn.state_dict.get("input_hint_block.0.weight")
    width = int(weight.shape[1]) if weight is not None and weight.dim() == 4 else None
    marker = _any_subset_marker(cn)
    marked = marker is not None
    if width == 3 and not marked:
        return PER_GROUP
    if not marked:
        raise CheckpointError(f"{path}: its hint block takes {width} channels; an SCG ControlNet takes 3 (one "
                              f"module selection) or is an any-subset file marked with {ANY_SUBSET_META_KEY!r}")
    try:
        n_vector = int(marker["n_vector"])
    except (ValueError, TypeError, KeyError):
        raise CheckpointError(f"{path}: bad {ANY_SUBSET_META_KEY!r} marker in its {CONTROLNET_META_KEY} metadata "
                              "(expected an object with n_vector)") from None
    if cn.autoencoder is None:
        raise CheckpointError(f"{path}: an any-subset ControlNet without its autoencoder")
    if n_vector != cn.autoencoder.n_vector or width != input_channels(n_vector):
        raise CheckpointError(f"{path}: any-subset ControlNet with a {width}-channel hint block for {n_vector} "
                              f"modules; its autoencoder has {cn.autoencoder.n_vector} modules, so the hint block "
                              f"must take {input_channels(cn.autoencoder.n_vector)} (3 hint + 1 per module)")
    return ANY_SUBSET


def save_any_subset_controlnet(cn: ControlNetFile, path, dtype: torch.dtype | None = None,
                               info: dict | None = None) -> None:
    """Write an any-subset ControlNet: :func:`save_controlnet` plus the :data:`ANY_SUBSET_META_KEY`
    marker; its hint block must take 3 + n_vector channels (checked by reading the kind back)."""
    from .subsets import input_channels

    if cn.autoencoder is None:
        raise SCGError("an any-subset ControlNet needs its autoencoder")
    width = int(cn.state_dict["input_hint_block.0.weight"].shape[1])
    n = cn.autoencoder.n_vector
    if width != input_channels(n):
        raise SCGError(f"any-subset ControlNet: hint block takes {width} channels, expected {input_channels(n)}")
    marker = {"n_vector": n, "version": 1, "input": "SCG hint (3 channels) then a presence mask (1 per module)"}
    save_controlnet(cn, path, dtype=dtype, info={**(info or {}), ANY_SUBSET_META_KEY: marker})

"""Files in the authors' formats, built with their real key names (no download)."""
import argparse
import sys
import types

import torch

AE_KEYS = {"c1_1.weight": (16, 3, 5, 5), "c1_2_1.weight": (16, 3, 5, 5),
           "c1_2_2.weight": (16, 1, 5, 5), "c2.weight": (64, 1, 5, 5)}


def authors_arg(**kw):
    """The ``arg`` namespace of ``equ_nv16_vl4_rn1_Bipolar_norm.pth`` (lists, as the authors store them)."""
    base = dict(n_vector=[16], vector_length=[4], rot_num=[1], gonlin="Bipolar", channel=3, lgn_stride=4,
                lgn_kernel_size=21, lgn_padding=10, activate_fn=None, dataset="imagenet", ensemble="moe",
                lr=0.005, num_steps=40000)
    base.update(kw)
    return argparse.Namespace(**base)


def ae_factors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) * 0.1 for k, s in AE_KEYS.items()}


def save_authors_pth(path, factors, arg=None):
    sd = {"lgn_ende.0.conv." + k: v for k, v in factors.items()}
    sd["lgn_ende.0.conv.eye"] = torch.eye(64)[:, :, None, None]
    sd["sep_trans.0.coef.weight"] = torch.zeros(1, 256, 9, 9)  # equivariance codebook: not the autoencoder
    torch.save({"arg": arg or authors_arg(), "state_dict": sd}, path)


class _Fake:
    """Stands for a Lightning/omegaconf object in a pickle (class placed in a fake module)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


_PLANTED = []


def _fake_class(module: str, name: str):
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        name_i = ".".join(parts[:i])
        if name_i not in sys.modules:
            sys.modules[name_i] = types.ModuleType(name_i)
            _PLANTED.append(name_i)
    mod = sys.modules[module]
    cls = type(name, (_Fake,), {"__module__": module})
    cls.__qualname__ = name
    setattr(mod, name, cls)
    return cls


def tiny_controlnet_keys(seed=0):
    """A small stand-in of the ControlNet part (the real layout's key names, small shapes)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, (i, o) in enumerate([(3, 16), (16, 16), (16, 32), (32, 32), (32, 96), (96, 96), (96, 256), (256, 32)]):
        sd[f"input_hint_block_new.{2 * k + 1}.weight"] = torch.randn(o, i, 3, 3, generator=g)
        sd[f"input_hint_block_new.{2 * k + 1}.bias"] = torch.randn(o, generator=g)
    sd["zero_convs.0.0.weight"] = torch.randn(32, 32, 1, 1, generator=g)
    sd["zero_convs.0.0.bias"] = torch.randn(32, generator=g)
    sd["input_blocks.0.0.weight"] = torch.randn(32, 4, 3, 3, generator=g)
    sd["middle_block_out.0.weight"] = torch.randn(32, 32, 1, 1, generator=g)
    return sd


def save_authors_ckpt(path, factors, controlnet=None, lightning_junk=True):
    """A PyTorch Lightning checkpoint of the whole ControlLDM, as the authors' training writes it."""
    sd = {}
    for prefix in ("control_model.input_hint_block_new.0.lgn_ende.conv.", "control_model.hypercolumn.lgn_ende.conv."):
        sd.update({prefix + k: v.clone() for k, v in factors.items()})
        sd[prefix + "eye"] = torch.eye(64)[:, :, None, None]
    sd.update({"control_model." + k: v for k, v in (controlnet or tiny_controlnet_keys()).items()})
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(8, 4, 3, 3)
    sd["first_stage_model.encoder.conv_in.weight"] = torch.randn(8, 3, 3, 3)
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    ckpt = {"state_dict": sd}
    try:
        if lightning_junk:
            ckpt.update(lightning_extras())
        torch.save(ckpt, path)
    finally:
        forget_planted()  # the loader must not see them: nothing here is importable at load time


class _Tripwire:
    """A class planted under a real library's name while a file is written: using it at load time fails."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __setstate__(self, state):
        raise AssertionError(f"the real {type(self).__module__}.{type(self).__qualname__} was used")


def _tripwire_class(module: str, name: str):
    cls = _fake_class(module, name)
    cls.__setstate__ = _Tripwire.__setstate__
    return cls


def lightning_extras():
    """What PyTorch Lightning adds around the state dict, with the real module and class names.

    omegaconf ``DictConfig``/``ListConfig`` (with ``ContainerMetadata``, ``AnyNode`` and
    ``typing.Any``), ``builtins`` dict/list/set/frozenset/tuple/int values, ``collections``
    ``OrderedDict``/``defaultdict``, the ``ModelCheckpoint`` callback (as a key, old style, and its
    state under a string key, new style), numpy scalars and arrays. Call :func:`forget_planted`
    after saving.
    """
    import collections
    import typing

    import numpy as np

    dict_config = _tripwire_class("omegaconf.dictconfig", "DictConfig")
    list_config = _tripwire_class("omegaconf.listconfig", "ListConfig")
    metadata = _tripwire_class("omegaconf.base", "ContainerMetadata")
    any_node = _tripwire_class("omegaconf.nodes", "AnyNode")
    model_checkpoint = _tripwire_class("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")

    def node(v):
        return any_node(_val=v, _metadata=metadata(ref_type=typing.Any, object_type=None, optional=True, key=None))

    hparams = dict_config(
        _metadata=metadata(ref_type=typing.Any, object_type=dict, optional=True, key=None, flags={},
                           key_type=typing.Any, element_type=typing.Any),
        _parent=None, _flags_cache=None,
        _content={"learning_rate": node(1e-5), "sd_locked": node(True),
                  "hint_channels": list_config(_content=[node(3), node(64)], _metadata=metadata(object_type=list))})
    best = {"best_model_score": torch.tensor(0.1), "monitor": "val/loss", "dirpath": "/home/someone/ckpt",
            "best_k_models": {"/home/someone/ckpt/epoch=3.ckpt": torch.tensor(0.2)}, "kth_value": np.float64(0.2),
            "last_model_path": "/etc/passwd"}
    return {
        "epoch": 4, "global_step": 147860, "pytorch-lightning_version": "1.5.0",
        "callbacks": {model_checkpoint: dict(best), "ModelCheckpoint{'monitor': 'val/loss'}": dict(best)},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3), "step": np.int64(7)}},
                              "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "params": [0]}]}],
        "lr_schedulers": [],
        "hyper_parameters": {"config": hparams, "tags": {"scg", "hc3"}, "frozen": frozenset({1, 2}),
                             "sizes": (512, 512), "counts": collections.defaultdict(int, {"a": 1}),
                             "order": collections.OrderedDict(b=2, a=1), "mean": np.array([0.5, 0.25]),
                             "type": int},
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 4}}}},
    }


def forget_planted():
    """Remove the modules planted by :func:`lightning_extras`: nothing of them is importable at load time."""
    while _PLANTED:
        sys.modules.pop(_PLANTED.pop(), None)

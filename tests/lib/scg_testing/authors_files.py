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
    if lightning_junk:
        ckpt_cls = _fake_class("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
        dict_cls = _fake_class("omegaconf.dictconfig", "DictConfig")
        ckpt.update({
            "epoch": 4, "global_step": 147860, "pytorch-lightning_version": "1.5.0",
            "callbacks": {ckpt_cls: {"best_model_score": torch.tensor(0.1), "monitor": None}},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-5}]}],
            "lr_schedulers": [],
            "hyper_parameters": {"config": dict_cls(learning_rate=1e-5, sd_locked=True)},
            "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 4}}}},
        })
    torch.save(ckpt, path)
    while _PLANTED:
        sys.modules.pop(_PLANTED.pop(), None)  # the loader must not see them: nothing here is importable at load time

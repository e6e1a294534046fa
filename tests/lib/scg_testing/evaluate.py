"""Tiny files for the evaluation tool's tests: an SD1.5-architecture checkpoint, an SCG ControlNet
in our converted format, and a folder of captioned images. Numbers from these models mean nothing.

The tiny base comes from the one tiny SD1.5 builder (``scg_testing.tiny_sd15``); this is the one place that
imports it, so moving the builder only changes the import below.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

RES = 32  # generation size of the tests: latent 4 x 4, hint 29 x 29


def tiny_base(path: Path):
    """Write the tiny SD1.5-architecture checkpoint (64-channel UNet, 2-layer CLIP, TAESD) to ``path``."""
    from scg_testing import tiny_sd15

    tiny_sd15.install()
    base = tiny_sd15.build_base(seed=0)
    tiny_sd15.save_checkpoint(base, path)
    return base


def random_scg_controlnet(base_or_config, seed: int = 1, ae_seed: int = 0, hint_channels: int = 3):
    """(ControlNet state dict, autoencoder): random weights everywhere (so the control changes the
    output), a hint block that passes the hint on at full strength, a random 16-module autoencoder."""
    from scg_models import ModularAutoencoder
    from train.sd15 import build_controlnet, init_weights

    cm = build_controlnet(base_or_config, seed=seed, hint_channels=hint_channels)
    init_weights(cm, seed)  # the zero convolutions too: an untrained ControlNet would change nothing
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in cm.input_hint_block:
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ae_seed)
        ae = ModularAutoencoder()
    return dict(cm.state_dict()), ae


def tiny_controlnet(base, path: Path, seed: int = 1, ae_seed: int = 0) -> None:
    """A per-group (HC0) SCG ControlNet for ``base`` from :func:`random_scg_controlnet`, in our
    converted .safetensors format."""
    from scg_models.formats import ControlNetFile, save_controlnet

    state_dict, ae = random_scg_controlnet(base, seed, ae_seed)
    save_controlnet(ControlNetFile(state_dict, ae, {}), path, info={"selection": "HC0"})


def make_images(folder: Path, names: list[str], size=(40, 48), seed: int = 0, captions: bool = True) -> None:
    """Patterned RGB images (PNG) with a ``.txt`` caption each, written in the order given."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    for i, name in enumerate(names):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(np.sin(xx / (2 + i)) + 1) * 127, (np.cos(yy / (3 + i)) + 1) * 127,
                        rng.uniform(0, 255, (h, w))], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / name)
        if captions:
            (folder / name).with_suffix(".txt").write_text(f"a pattern (number {i})\n")


def as_authors_ckpt(converted: Path, path: Path) -> None:
    """Rewrite a converted ControlNet file in the authors' Lightning ``.ckpt`` layout (same weights):
    ``control_model.*`` keys, the hint block as ``input_hint_block_new.{k+1}`` with the autoencoder's
    factors at ``input_hint_block_new.0.lgn_ende.conv.*``."""
    from scg_models.formats import load_controlnet_file

    cn = load_controlnet_file(converted)
    sd = {}
    for key, v in cn.state_dict.items():
        if key.startswith("input_hint_block."):
            k, rest = key[len("input_hint_block."):].split(".", 1)
            key = f"input_hint_block_new.{int(k) + 1}.{rest}"
        sd["control_model." + key] = v.clone()
    for key, v in cn.autoencoder.state_dict().items():
        sd["control_model.input_hint_block_new.0.lgn_ende.conv." + key[len("gonlin."):]] = v.clone()
    torch.save({"state_dict": sd, "global_step": 0}, path)


@contextlib.contextmanager
def tiny_setup(host, root: Path):
    """One torch thread, the host's ComfyUI imported (torchaudio stubbed where missing), and the tiny
    base written to ``root/tiny_sd15.safetensors``; yields the base. Threads are restored after."""
    from scg_testing import torchaudio_stub
    from train import sd15

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if "comfy.model_management" not in sys.modules:
            torchaudio_stub.install()
        sd15.import_comfy(host, cpu=True)
        yield tiny_base(root / "tiny_sd15.safetensors")
    finally:
        torch.set_num_threads(threads)

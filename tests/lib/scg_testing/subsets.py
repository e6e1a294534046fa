"""A tiny any-subset SCG ControlNet with random weights, in the any-subset file format
(evaluation and host tiers). Numbers it produces mean nothing."""
from __future__ import annotations

from pathlib import Path

import torch


def tiny_any_subset_controlnet(base_or_config, path: Path, seed: int = 1, ae_seed: int = 0) -> None:
    """An any-subset ControlNet (hint block input 3 + 16) for ``base_or_config`` (a
    ``train.sd15.Base`` or a UNet config), random weights everywhere (so the control and the
    presence mask change the output), a random 16-module autoencoder embedded."""
    from scg_models import ModularAutoencoder
    from scg_models.formats import ControlNetFile, save_any_subset_controlnet
    from scg_models.subsets import input_channels
    from train.sd15 import build_controlnet, init_weights

    cm = build_controlnet(base_or_config, seed=seed, hint_channels=input_channels(16))
    init_weights(cm, seed)  # the zero convolutions too: an untrained ControlNet would change nothing
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in cm.input_hint_block:
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ae_seed)
        ae = ModularAutoencoder()
    save_any_subset_controlnet(ControlNetFile(dict(cm.state_dict()), ae, {}), path,
                               info={"selection": "all", "kind": "any_subset"})

"""A tiny any-subset SCG ControlNet with random weights, in the any-subset file format
(evaluation and host tiers). Numbers it produces mean nothing."""
from __future__ import annotations

from pathlib import Path


def tiny_any_subset_controlnet(base_or_config, path: Path, seed: int = 1, ae_seed: int = 0) -> None:
    """An any-subset ControlNet (hint block input 3 + 16) for ``base_or_config`` (a
    ``train.sd15.Base`` or a UNet config), random weights everywhere (so the control and the
    presence mask change the output), a random 16-module autoencoder embedded."""
    from scg_models.formats import ControlNetFile, save_any_subset_controlnet
    from scg_models.subsets import input_channels
    from scg_testing.evaluate import random_scg_controlnet

    state_dict, ae = random_scg_controlnet(base_or_config, seed, ae_seed, hint_channels=input_channels(16))
    save_any_subset_controlnet(ControlNetFile(state_dict, ae, {}), path,
                               info={"selection": "all", "kind": "any_subset"})

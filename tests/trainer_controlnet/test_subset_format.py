"""The any-subset ControlNet file format: detected by its hint block's width and its marker."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from scg_models import CheckpointError, ModularAutoencoder, SCGError, formats


def _file(width: int, ae) -> formats.ControlNetFile:
    g = torch.Generator().manual_seed(0)
    sd = {"input_hint_block.0.weight": torch.randn(16, width, 3, 3, generator=g),
          "input_hint_block.0.bias": torch.randn(16, generator=g),
          "zero_convs.0.0.weight": torch.randn(8, 8, 1, 1, generator=g)}
    return formats.ControlNetFile(sd, ae, {})


@pytest.fixture
def ae():
    torch.manual_seed(0)
    return ModularAutoencoder()


def test_round_trip_keeps_kind_weights_and_autoencoder(ae, tmp_path):
    path = tmp_path / "any.safetensors"
    formats.save_any_subset_controlnet(_file(19, ae), path, info={"selection": "all"})
    back = formats.load_controlnet_file(path)
    assert formats.controlnet_kind(back, str(path)) == formats.ANY_SUBSET
    assert back.state_dict.keys() == _file(19, ae).state_dict.keys()
    for k, v in _file(19, ae).state_dict.items():
        assert torch.equal(back.state_dict[k], v)
    assert back.autoencoder.n_vector == 16
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    info = json.loads(meta[formats.CONTROLNET_META_KEY])
    assert info["selection"] == "all" and info[formats.ANY_SUBSET_META_KEY]["n_vector"] == 16
    # per-group files (ours) keep their kind
    formats.save_controlnet(_file(3, ae), tmp_path / "hc0.safetensors")
    assert formats.controlnet_kind(formats.load_controlnet_file(tmp_path / "hc0.safetensors")) == formats.PER_GROUP


def test_inconsistent_files_are_refused(ae, tmp_path):
    # wide hint block without the marker
    formats.save_controlnet(_file(19, ae), tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointError, match="takes 19 channels"):
        formats.controlnet_kind(formats.load_controlnet_file(tmp_path / "wide.safetensors"), "wide")
    # the marker on a 3-channel file
    marker = {formats.ANY_SUBSET_META_KEY: {"n_vector": 16}}
    formats.save_controlnet(_file(3, ae), tmp_path / "narrow.safetensors", info=marker)
    with pytest.raises(CheckpointError, match="must take 19"):
        formats.controlnet_kind(formats.load_controlnet_file(tmp_path / "narrow.safetensors"), "narrow")
    # a marker without its module count
    formats.save_controlnet(_file(19, ae), tmp_path / "bad.safetensors", info={formats.ANY_SUBSET_META_KEY: "yes"})
    with pytest.raises(CheckpointError, match="bad 'any_subset' marker"):
        formats.controlnet_kind(formats.load_controlnet_file(tmp_path / "bad.safetensors"), "bad")
    # the writer refuses a hint block that does not fit the autoencoder
    with pytest.raises(SCGError, match="expected 19"):
        formats.save_any_subset_controlnet(_file(3, ae), tmp_path / "x.safetensors")

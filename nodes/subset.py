"""Any-subset SCG ControlNets in the nodes, and the per-group selection check.

* An any-subset ControlNet (docs/any_subset.md) is recognised by its hint block's input width,
  3 + the autoencoder's module count: *Apply SCG ControlNet* then feeds it the hint of the
  node's ``modules``/``gains`` selection followed by the selection's presence mask
  (:func:`scg_models.subsets.subset_input`), with no extra wiring.
* *Load SCG ControlNet* remembers which modules a per-group file was trained on (from its
  metadata); *Apply SCG ControlNet* warns once when such a ControlNet gets another selection.
"""
from __future__ import annotations

import json
import logging
import weakref

import torch

from ..scg_models import formats
from ..scg_models.imaging import fit
from ..scg_models.subsets import input_channels, subset_input
from .common import HintSource, loaded_module

log = logging.getLogger("SCG")

#: control model -> the module indices its per-group file was trained on
_TRAINED: weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, ...]] = weakref.WeakKeyDictionary()
_WARNED: set[tuple[int, tuple[int, ...]]] = set()


class SubsetHintSource(HintSource):
    """The input of an any-subset ControlNet: hint and presence mask, B x (3 + n_vector) x h x w."""

    def __call__(self, images: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
        if height is not None and width is not None:
            images = fit(images.float(), height, width)
        ae, device = loaded_module(self.patcher)
        n = images.shape[0]
        return subset_input(ae, images.to(device), [self.modules] * n,
                            gains=None if self.gains is None else [self.gains] * n)


def hint_block(control_model) -> torch.nn.Module | None:
    model = getattr(control_model, "model", control_model)  # ExactHintModel wraps the real one
    return getattr(model, "input_hint_block", None)


def hint_width(control_net) -> int | None:
    block = hint_block(control_net.control_model)
    return getattr(block[0], "in_channels", None) if block is not None else None


def is_any_subset(control_net, ae) -> bool:
    """Whether ``control_net``'s hint block takes the any-subset input for autoencoder ``ae``."""
    return hint_width(control_net) == input_channels(ae.n_vector)


def hint_source(control_net, scg_ae, modules, gains, dtype) -> HintSource:
    """The node's hint source: hint + presence mask for an any-subset ControlNet, else the hint."""
    if is_any_subset(control_net, scg_ae.ae):
        return SubsetHintSource(scg_ae, modules, gains, dtype)
    warn_untrained_selection(control_net, modules)
    return HintSource(scg_ae, modules, gains, dtype)


def remember_trained(control_net, cn_file: formats.ControlNetFile, name: str) -> str:
    """At loading: the file's kind (an inconsistent any-subset file is an error), and for a
    per-group file of ours the modules it was trained on. Returns the kind."""
    kind = formats.controlnet_kind(cn_file, name)
    if kind == formats.PER_GROUP:
        try:
            modules = json.loads(cn_file.metadata.get(formats.CONTROLNET_META_KEY, "{}")).get("modules")
        except (ValueError, AttributeError):
            modules = None
        if isinstance(modules, list) and all(isinstance(m, int) for m in modules):
            block = hint_block(control_net.control_model)
            if block is not None:
                _TRAINED[block] = tuple(modules)
    return kind


def warn_untrained_selection(control_net, modules) -> None:
    """Log once per ControlNet and selection when a per-group ControlNet gets modules it was not trained on."""
    block = hint_block(control_net.control_model)
    trained = _TRAINED.get(block) if block is not None else None
    if trained is None or sorted(trained) == sorted(modules):
        return
    key = (id(block), tuple(sorted(modules)))
    if key in _WARNED:
        return
    _WARNED.add(key)
    log.warning("SCG: this per-group ControlNet was trained on modules %s but gets modules %s; its control may be "
                "weak or wrong (an any-subset ControlNet takes any selection)", list(trained), list(modules))

"""Any-subset SCG ControlNets in the nodes, and the per-group selection check.

* An any-subset ControlNet (docs/any_subset.md) is recognised by its hint block's input width,
  3 + the autoencoder's module count: *Apply SCG ControlNet* then feeds it the hint of the
  node's ``modules``/``gains`` selection followed by the selection's presence mask
  (:func:`scg_models.subsets.subset_input`), on a raw canvas like the hint's
  (:mod:`scg_models.geometry`), with no extra wiring.
* *Load SCG ControlNet* remembers which modules a per-group file was trained on (from its
  metadata); *Apply SCG ControlNet* warns once when such a ControlNet gets another selection.
"""
from __future__ import annotations

import json
import logging
import weakref

import torch

from ..scg_models import SCGError, formats
from ..scg_models.imaging import fit
from ..scg_models.subsets import input_channels, subset_input
from .common import loaded_module
from .scg_controlnet import SCGHint, control_module

log = logging.getLogger("SCG")

#: control model -> the module indices its per-group file was trained on
_TRAINED: weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, ...]] = weakref.WeakKeyDictionary()
_WARNED: set[tuple[int, tuple[int, ...]]] = set()


class SubsetHint(SCGHint):
    """``preprocess_image`` hook of an any-subset ControlNet: the raw canvas of the hint of the
    selection (gains applied) followed by its presence mask, B x (3 + n_vector) x H x W."""

    def __call__(self, resized: torch.Tensor) -> torch.Tensor:
        height, width = resized.shape[-2:]
        images = fit(self.images, height, width) if resized.shape[0] == self.images.shape[0] else resized
        ae, device = loaded_module(self.patcher)
        n = images.shape[0]
        x = subset_input(ae, images.to(device), [self.modules] * n,
                         gains=None if self.gains is None else [self.gains] * n)
        try:
            return self.geometry.to_canvas(x, height, width, encode=False)
        except SCGError as e:
            raise SCGError(f"gains/modules: {e}") from None


def hint_width(control_net) -> int | None:
    block = getattr(control_module(control_net.control_model), "input_hint_block", None)
    return getattr(block[0], "in_channels", None) if block is not None else None


def is_any_subset(control_net, ae) -> bool:
    """Whether ``control_net``'s hint block takes the any-subset input for autoencoder ``ae``."""
    return hint_width(control_net) == input_channels(ae.n_vector)


def hint_hook(control_net, images, patcher, modules, gains, geometry) -> SCGHint:
    """Apply SCG ControlNet's hint hook: hint + presence mask for an any-subset ControlNet, else the
    hint (warning once when a per-group ControlNet gets modules it was not trained on)."""
    if is_any_subset(control_net, patcher.model):
        return SubsetHint(images, patcher, modules, gains, geometry)
    warn_untrained_selection(control_net, modules)
    return SCGHint(images, patcher, modules, gains, geometry)


def remember_trained(control_net, cn_file: formats.ControlNetFile, name: str) -> str:
    """At loading: the file's kind (an inconsistent any-subset file is an error), and for a
    per-group file of ours the modules it was trained on. Returns the kind."""
    kind = formats.controlnet_kind(cn_file, name)
    if kind == formats.PER_GROUP:
        try:
            info = json.loads(cn_file.metadata.get(formats.CONTROLNET_META_KEY, "{}"))
        except ValueError:
            info = {}
        modules = info.get("modules") if isinstance(info, dict) else None
        if isinstance(modules, list) and modules and all(isinstance(m, int) for m in modules):
            _TRAINED[control_module(control_net.control_model)] = tuple(modules)
    return kind


def warn_untrained_selection(control_net, modules) -> None:
    """Log once per ControlNet and selection when a per-group ControlNet gets modules it was not trained on."""
    model = control_module(control_net.control_model)
    trained = _TRAINED.get(model)
    if trained is None or sorted(trained) == sorted(modules):
        return
    key = (id(model), tuple(sorted(modules)))
    if key in _WARNED:
        return
    _WARNED.add(key)
    log.warning("SCG: this per-group ControlNet was trained on modules %s but gets modules %s; its control may be "
                "weak or wrong (an any-subset ControlNet takes any selection)", list(trained), list(modules))

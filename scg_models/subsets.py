"""Any-subset SCG ControlNets: the random module subsets of training and the presence mask.

One any-subset ControlNet takes any selection of the autoencoder's modules. Its input is the
SCG hint of the selection (3 channels) followed by a *presence mask*: one channel per module
of the autoencoder (``n_vector``, 16 for the released model), 1 where the module is in the
selection and 0 where it is not, constant over the image. So the ControlNet can tell "module
absent" (mask 0) from "module present but quiet" (mask 1, small hint contribution).

Training draws one subset per sample (:func:`draw_subset`). The draw is a pure function of
``(seed, position)``, where ``position`` is the sample's global index in the run's sample stream
(``step``, ``rank`` and the index in the batch all go into it), so a resumed run and a run on
W processes draw exactly the subsets one process draws. PyTorch and NumPy only.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .errors import SCGError

#: hint channels before the presence mask (the SCG hint is RGB-like)
HINT_CHANNELS = 3
#: salt of the subset stream, so its RNG never coincides with the noise/timestep stream of a position
_SALT = 0x5C65_0B5E


@dataclass(frozen=True)
class SubsetPolicy:
    """How a training sample's module subset is drawn.

    ``p_none``: probability of the empty subset (hint all zeros, mask all zeros: "no
    control"); ``p_group``: probability of a group-level draw (k groups: k = 1 with probability
    1/2, else k uniform in 2..G; a uniformly random k-subset of the G groups, their modules
    united; single groups, the common use, are half of these draws); otherwise (probability
    ``1 - p_none - p_group``) a module-level draw (k modules, k uniform in 1..M, a uniformly
    random k-subset of the M modules of the pool).
    """

    p_group: float = 0.6
    p_module: float = 0.35
    p_none: float = 0.05

    def __post_init__(self):
        for name in ("p_group", "p_module", "p_none"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise SCGError(f"--{name.replace('_', '-')}: {v} is not a probability in [0, 1]")
        total = self.p_group + self.p_module + self.p_none
        if abs(total - 1.0) > 1e-6:
            raise SCGError(f"--p-group + --p-module + --p-none must be 1; got {self.p_group} + {self.p_module} + "
                           f"{self.p_none} = {total:g}")

    def to_dict(self) -> dict:
        return asdict(self)


def subset_generator(seed: int, position: int) -> np.random.Generator:
    """The RNG of the subset of one sample position: depends only on (seed, position), with the
    full entropy of both (a torch CPU generator would keep only 32 bits of its seed)."""
    return np.random.default_rng([_SALT, int(seed) % 2**64, int(position) % 2**64])


def _pick(items: Sequence, g: np.random.Generator, single: float = 0.0) -> list:
    """A random non-empty subset of ``items``: one item with probability ``single``, else k uniform in
    (1 or 2)..len(items) items."""
    one = g.random() < single or len(items) == 1
    k = 1 if one else int(g.integers(2 if single > 0 else 1, len(items) + 1))
    return [items[i] for i in sorted(g.permutation(len(items))[:k].tolist())]


def draw_subset(policy: SubsetPolicy, pool: Sequence[int], groups: Mapping[str, Sequence[int]], seed: int,
                position: int) -> list[int]:
    """The sorted module indices of sample ``position`` (possibly empty: the "no modules" sample).

    ``pool``: the modules that may be drawn; ``groups``: name -> modules (only groups lying
    wholly inside the pool are drawn at group level; with none, group draws become module draws).
    """
    g = subset_generator(seed, position)
    u = float(g.random())
    if u < policy.p_none or not pool:
        return []
    pool = sorted(int(m) for m in pool)
    inside = [sorted(set(int(m) for m in mods)) for mods in groups.values() if set(mods) <= set(pool) and mods]
    if u < policy.p_none + policy.p_group and inside:
        return sorted({m for mods in _pick(inside, g, single=0.5) for m in mods})
    return sorted(_pick(pool, g))


def presence_mask(modules: Sequence[int], n_vector: int) -> torch.Tensor:
    """``n_vector`` floats: 1 for the modules in the selection, 0 for the others."""
    mask = torch.zeros(n_vector)
    if len(modules):
        mask[torch.as_tensor(list(modules), dtype=torch.long)] = 1.0
    return mask


def input_channels(n_vector: int) -> int:
    """Input width of an any-subset ControlNet's hint block: 3 hint channels + one per module."""
    return HINT_CHANNELS + int(n_vector)


@torch.no_grad()
def subset_input(ae, images: torch.Tensor, selections: Sequence[Sequence[int]], gains=None,
                 masks: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """The any-subset ControlNet's input: hint and presence mask, B x (3 + n_vector) x h x w.

    images: B x 3 x H x W in [0, 1] (the generation size); ``selections``: one module list per
    image (an empty list: zero hint, zero mask); ``gains``: None (all 1) or one gain list per
    image (see :func:`scg_models.groups.parse_gains`). The hint is ``ae.hint`` (raw,
    :meth:`ModularAutoencoder.output_size`); the mask is constant over h x w. ``masks``:
    the module lists the mask marks (default: the selections themselves; another list is only
    for measuring that the mask matters). Images sharing a selection are encoded together.
    """
    if len(selections) != images.shape[0]:
        raise SCGError(f"selections: {len(selections)} given for {images.shape[0]} images")
    p = next(ae.parameters())
    h, w = ae.output_size(*images.shape[-2:])
    out = torch.zeros(images.shape[0], input_channels(ae.n_vector), h, w, dtype=p.dtype, device=p.device)
    keys: dict[tuple, list[int]] = {}
    for i, sel in enumerate(selections):
        key = (tuple(int(m) for m in sel), tuple(gains[i]) if gains is not None and gains[i] is not None else None)
        keys.setdefault(key, []).append(i)
    for (mods, gain), rows in keys.items():
        if mods:
            out[rows, :HINT_CHANNELS] = ae.hint(images[rows], list(mods), list(gain) if gain else None).to(out)
    for i, sel in enumerate(masks if masks is not None else selections):
        out[i, HINT_CHANNELS:] = presence_mask(sel, ae.n_vector).to(out).view(-1, 1, 1)
    return out


__all__ = ["HINT_CHANNELS", "SubsetPolicy", "draw_subset", "input_channels", "presence_mask", "subset_generator",
           "subset_input"]

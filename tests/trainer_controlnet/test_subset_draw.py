"""The any-subset draw and presence mask (scg_models.subsets): pure functions of (seed, position).

No ComfyUI needed: the draw, the DDP/resume equivalence of the sample positions and the input
the ControlNet gets.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scg_models import ModularAutoencoder, SCGError
from scg_models.subsets import SubsetPolicy, draw_subset, input_channels, presence_mask, subset_input
from train.cn_data import step_batches
from train.runtime import EpochOrder

POLICY = SubsetPolicy(0.6, 0.35, 0.05)


def _ae():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ModularAutoencoder()


GROUPS = _ae().groups
POOL = list(range(16))


def draws(seed, positions, policy=POLICY):
    return [draw_subset(policy, POOL, GROUPS, seed, p) for p in positions]


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**40), position=st.integers(-2**40, 2**40))
def test_a_draw_depends_only_on_seed_and_position(seed, position):
    a = draw_subset(POLICY, POOL, GROUPS, seed, position)
    torch.manual_seed(123)  # the global RNGs play no part
    np.random.seed(5)
    b = draw_subset(POLICY, POOL, GROUPS, seed, position)
    assert a == b
    assert a == sorted(set(a)) and all(0 <= m < 16 for m in a)


def test_two_ranks_draw_what_one_process_at_twice_the_batch_draws():
    """Positions of step_batches: 2 ranks x batch 2 cover exactly 1 process x batch 4, so the draws match."""
    order = EpochOrder(7, seed=0)
    one = [p for batch in step_batches(order, 4, 1, 0, 0, 5) for p, _ in batch]
    two = {r: [batch for batch in step_batches(order, 2, 2, r, 0, 5)] for r in (0, 1)}
    merged = [p for k in range(5) for r in (0, 1) for p, _ in two[r][k]]
    assert merged == one
    assert draws(9, merged) == draws(9, one)


def test_a_resumed_stream_draws_the_same_subsets():
    order = EpochOrder(5, seed=3)
    straight = [p for b in step_batches(order, 2, 1, 0, 0, 8) for p, _ in b]
    resumed = [p for b in step_batches(order, 2, 1, 0, 0, 3) for p, _ in b] + \
              [p for b in step_batches(order, 2, 1, 0, 3, 8) for p, _ in b]
    assert draws(1, straight) == draws(1, resumed)


def test_draw_frequencies_follow_the_policy():
    n = 4000
    out = draws(0, range(n))
    empty = sum(not s for s in out) / n
    as_groups = sum(bool(s) and any(set(s) == set(g) for g in GROUPS.values()) for s in out) / n
    assert 0.03 < empty < 0.07  # p_none 0.05
    assert as_groups > 0.1  # single groups are drawn often enough to learn them
    assert len({tuple(s) for s in out}) > 500  # and many different subsets
    assert draws(0, range(50)) != draws(1, range(50))  # the seed matters
    only_none = SubsetPolicy(0.0, 0.0, 1.0)
    assert draws(0, range(20), only_none) == [[]] * 20
    only_modules = SubsetPolicy(0.0, 1.0, 0.0)
    pool = [2, 3, 10]
    assert all(s and set(s) <= set(pool) for s in (draw_subset(only_modules, pool, GROUPS, 0, p) for p in range(50)))


def test_policy_is_checked():
    with pytest.raises(SCGError, match="must be 1"):
        SubsetPolicy(0.5, 0.5, 0.5)
    with pytest.raises(SCGError, match="--p-none"):
        SubsetPolicy(0.6, 0.6, -0.2)


def test_input_is_hint_plus_presence_mask():
    ae = _ae()
    images = torch.rand(3, 3, 48, 48)
    hc0, hc1 = GROUPS["HC0"], GROUPS["HC1"]
    x = subset_input(ae, images, [hc0, [], hc1])
    h, w = ae.output_size(48, 48)
    assert x.shape == (3, input_channels(16), h, w) == (3, 19, 45, 45)
    assert torch.equal(x[0, :3], ae.hint(images[:1], hc0)[0])
    assert torch.equal(x[2, :3], ae.hint(images[2:], hc1)[0])
    assert torch.count_nonzero(x[1]) == 0  # no modules: no hint, no mask
    assert torch.equal(x[0, 3:, 5, 7], presence_mask(hc0, 16)) and torch.equal(x[0, 3:, 0, 0], x[0, 3:, -1, -1])
    assert presence_mask(hc0, 16).sum() == len(hc0) and presence_mask([], 16).sum() == 0
    # the mask can be swapped independently of the hint (the proof's "wrong mask" row)
    y = subset_input(ae, images[:1], [hc0], masks=[hc1])
    assert torch.equal(y[0, :3], x[0, :3]) and torch.equal(y[0, 3:, 0, 0], presence_mask(hc1, 16))
    # gains scale the hint like ae.hint's
    z = subset_input(ae, images[:1], [hc1], gains=[[2.0, 0.5]])
    assert torch.allclose(z[0, :3], ae.hint(images[:1], hc1, [2.0, 0.5])[0])

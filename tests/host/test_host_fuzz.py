"""Random node inputs in the host: every case ends in a result with finite values, or the project's error.

A fixed budget (hypothesis, derandomized, about 30 s on two CPU cores); each test prints its outcomes
by kind. The hint hook of Apply SCG ControlNet is run directly (what the sampler calls once per run),
so no sampling is needed to see its output.
"""
import collections

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scg_testing.host import conditioning, make_images, random_ae, run_node, tiny_controlnet

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def mostly(valid, hostile):
    """``valid`` four times in five, ``hostile`` otherwise (so results get checked too, not only errors)."""
    return st.integers(0, 4).flatmap(lambda i: hostile if i == 0 else valid)


NUMBERS = mostly(st.floats(0.01, 1), st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
    [0.0, 10.0, 1e308, -1e-300, float("nan"), float("inf")])))
SELECTIONS = mostly(st.sampled_from(["HC0", "HC2+HC3", "all", "0,1,4", "HC9", "15", " HC0 "]), st.one_of(
    st.sampled_from(["HC0,HC1", "16", "-1", "", "hc0", "HC0+HC0", "nan"]), st.text(max_size=12)))
GAINS = mostly(st.sampled_from(["", "1.5", "HC0:2", "HC0:-3", "0.5", "0:1e-45"]), st.one_of(st.sampled_from(
    ["HC0:1e30", "1e308", "nan", "inf", "-inf", "0:nan", "1.5,2", "HC0:"]), st.text(max_size=12)))


@pytest.fixture(scope="module")
def ae():
    return random_ae(seed=8)


@pytest.fixture(scope="module")
def outcomes():
    counts = collections.Counter()
    yield counts
    print("\n[SCG fuzz] " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


def images(draw_shape, fill):
    b, h, w, c = draw_shape
    x = make_images(batch=b, height=h, width=w, seed=h * w)[..., :c] if c <= 3 else torch.cat(
        [make_images(batch=b, height=h, width=w), torch.ones(b, h, w, 1)], -1)
    if fill is not None and b:
        x = x.clone()
        x[0, 0, 0, 0] = fill
    return x


SHAPES = mostly(st.tuples(st.integers(1, 2), st.integers(21, 40), st.integers(21, 40), st.sampled_from([1, 3, 4])),
                st.tuples(st.integers(0, 2), st.integers(1, 40), st.integers(1, 40), st.integers(1, 4)))
FILLS = mostly(st.none(), st.sampled_from([float("nan"), float("inf"), -0.7, 1.7, 255.0]))


@SETTINGS
@given(shape=SHAPES, fill=FILLS, modules=SELECTIONS, gains=GAINS, resolution=mostly(st.sampled_from([64, 72]), st.sampled_from([8, 0, 10**6])),
       grid=mostly(st.sampled_from(["off", "plain", "labelled"]), st.just("sideways")))
def test_hypercolumn_extract(node, scg_ae, scg_error, outcomes, shape, fill, modules, gains, resolution, grid):
    try:
        out = run_node(node("HypercolumnExtract"), image=images(shape, fill), scg_autoencoder=scg_ae,
                       modules=modules, gains=gains, grid=grid, resolution=resolution)
    except scg_error as e:
        outcomes[f"extract: error naming {str(e).split(':')[0]}"] += 1
        return
    assert all(torch.isfinite(t).all() for t in out)
    assert 0 <= out[0].min() and out[0].max() <= 1  # the hint image stays an image
    outcomes["extract: result"] += 1


@SETTINGS
@given(strength=NUMBERS, start=NUMBERS, end=NUMBERS, modules=SELECTIONS, gains=GAINS, fill=FILLS)
def test_scg_control_apply(node, scg_ae, scg_error, outcomes, strength, start, end, modules, gains, fill):
    pos, neg = conditioning()
    try:
        p, n = run_node(node("SCGControlApply"), positive=pos, negative=neg, control_net=CONTROL_NET,
                        image=images((1, 32, 32, 3), fill), strength=strength, start_percent=start,
                        end_percent=end, scg_autoencoder=scg_ae, modules=modules, gains=gains)
        if p is pos:
            outcomes["apply: strength 0, unchanged"] += 1
            return
        with torch.inference_mode():
            canvas = p[0][1]["control"].preprocess_image(torch.zeros(1, 3, 32, 32))  # what the sampler asks for
    except scg_error as e:
        outcomes[f"apply: error naming {str(e).split(':')[0]}"] += 1
        return
    assert canvas.shape == (1, 3, 32, 32) and torch.isfinite(canvas).all()
    outcomes["apply: result"] += 1


CONTROL_NET = tiny_controlnet(None, seed=2)

"""python -m train.evaluate with an any-subset ControlNet (tiny random models; numbers mean nothing)."""
from __future__ import annotations

import json

import pytest
import torch

from scg_testing.core import recorded_hints
from scg_testing.evaluate import RES, make_images, tiny_controlnet, tiny_setup
from scg_testing.hosts import find_host
from scg_testing.subsets import tiny_any_subset_controlnet

HOST = find_host()
pytestmark = [pytest.mark.host, pytest.mark.skipif(
    HOST is None, reason="EVALUATION TOOL TESTS SKIPPED: no ComfyUI checkout ($COMFYUI_PATH, ~/comfy/ComfyUI)")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_subset")
    with tiny_setup(HOST, root) as base:
        tiny_any_subset_controlnet(base, root / "any.safetensors")
        tiny_controlnet(base, root / "hc0.safetensors")
        make_images(root / "images", ["a.png", "b.png"])
        yield {"root": root, "base": str(root / "tiny_sd15.safetensors"), "any": str(root / "any.safetensors"),
               "hc0": str(root / "hc0.safetensors"), "images": str(root / "images")}


def _argv(files, out, *extra):
    return ["--checkpoint", files["base"], "--images", files["images"], "--out", str(out), "--resolution", str(RES),
            "--steps", "2", "--device", "cpu", "--no-progress", "--comfyui", str(HOST), *extra]


def test_any_subset_file_is_evaluated_with_each_selection(files):
    from train.evaluate import main, read_png

    out = files["root"] / "out"
    assert main(_argv(files, out, "--controlnet", files["any"], "--controlnet", "HC0=" + files["hc0"],
                      "--groups", "HC0,HC1,HC2+HC3,none")) == 0
    data = json.loads((out / "results.json").read_text())
    rows = {r["selection"]: r for r in data["rows"]}
    assert list(rows) == ["HC0", "HC1", "HC2+HC3", "none"]
    assert rows["HC0"]["controlnet"] == "hc0.safetensors" and rows["HC1"]["controlnet"] == "any.safetensors"
    for r in rows.values():
        assert r["n"] == 2 and all(v is None or v == v for v in r["metrics"].values())
    images = {s: read_png(out / r["folder"] / "0000-a.png") for s, r in rows.items()}
    assert (images["HC1"] - images["HC2+HC3"]).abs().max() > 0.5 / 255  # the selection reaches the 8-bit result
    assert (images["HC1"] - images["none"]).abs().max() > 0.5 / 255


def test_the_controlnet_gets_hint_and_presence_mask(files):
    from scg_models.subsets import presence_mask
    from train import evaluate, sd15
    from train.cn_data import load_image

    base = sd15.load_base(files["base"])
    control = evaluate.load_control(files["any"], base, None, torch.device("cpu"), torch.float32)
    assert control.kind == "any_subset"
    with recorded_hints(control.control.control_model) as seen:
        image = load_image(f"{files['images']}/a.png", RES)[None]
        args = evaluate.build_parser().parse_args(_argv(files, files["root"] / "unused", "--steps", "1"))
        evaluate.generate(base, control, "HC1", image, sd15.encode_text(base, ["x"]), sd15.encode_text(base, [""]),
                          0, args)
    assert seen
    for h in seen:
        assert h.shape[1:] == (19, 29, 29)
        assert torch.allclose(h[0, :3].float(), control.ae.hint(image, "HC1")[0])
        assert torch.equal(h[0, 3:, 4, 4].float(), presence_mask(control.ae.groups["HC1"], 16))

"""python -m train.evaluate end to end on tiny SD1.5-architecture models (numbers mean nothing).

Needs a ComfyUI checkout (the tool runs through ComfyUI's model classes and sampler); skipped
loudly without one.
"""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from scg_testing.core import recorded_hints
from scg_testing.evaluate import RES, as_authors_ckpt, make_images, tiny_controlnet, tiny_setup
from scg_testing.hosts import find_host

HOST = find_host()
pytestmark = [pytest.mark.host, pytest.mark.skipif(
    HOST is None, reason="EVALUATION TOOL TESTS SKIPPED: no ComfyUI checkout ($COMFYUI_PATH, ~/comfy/ComfyUI)")]

NAMES = ["c.png", "a.png", "b.png"]  # written in this order; sorted: a, b, c


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    with tiny_setup(HOST, root) as base:
        tiny_controlnet(base, root / "cn.safetensors")
        make_images(root / "images", NAMES)
        yield {"root": root, "base": str(root / "tiny_sd15.safetensors"), "cn": str(root / "cn.safetensors"),
               "images": str(root / "images")}


def _argv(files, out, *extra):
    return ["--checkpoint", files["base"], "--controlnet", files["cn"], "--images", files["images"],
            "--out", str(out), "--resolution", str(RES), "--steps", "2", "--device", "cpu", "--no-progress",
            "--comfyui", str(HOST), *extra]


@pytest.fixture(scope="module")
def report(files, tmp_path_factory):
    """One run of the tool: groups HC0, HC1 and no control, 3 images, 2 DDIM steps."""
    from train.evaluate import main

    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))  # no Inception weights in its hub cache
    out = files["root"] / "out"
    warnings = _Records()
    logging.getLogger("scg.evaluate").addHandler(warnings)
    try:
        assert main(_argv(files, out, "--groups", "HC0,HC1,none")) == 0
    finally:
        mp.undo()
        logging.getLogger("scg.evaluate").removeHandler(warnings)
    data = json.loads((out / "results.json").read_text())
    data["_warnings"] = warnings.messages
    return out, data


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _read(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)).permute(2, 0, 1) / 255


def test_report_rows_numbers_and_files(report):
    out, data = report
    assert [r["selection"] for r in data["rows"]] == ["HC0", "HC1", "none"]
    assert data["settings"]["steps"] == 2 and data["settings"]["sampler"] == "ddim"
    refs = sorted(p.name for p in (out / "reference").iterdir())
    assert refs == ["0000-a.png", "0001-b.png", "0002-c.png"]  # sorted source names, numbered
    for row in data["rows"]:
        assert row["n"] == 3
        for key in ("psnr_grey", "psnr_colour", "ssim_grey", "ssim_colour"):
            assert isinstance(row["metrics"][key], float) and math.isfinite(row["metrics"][key]), (row, key)
        assert row["metrics"]["fid"] is None and row["metrics"]["clip"] is None
        assert sorted(p.name for p in (out / row["folder"]).iterdir()) == refs
        for name in refs:
            assert Image.open(out / row["folder"] / name).size == (RES, RES)
    assert data["rows"][0]["controlnet"] == "cn.safetensors" and data["rows"][2]["controlnet"] == ""
    assert data["rows"][0]["trained_on"] == "HC0"
    assert data["_warnings"] == ["cn.safetensors was trained on HC0 but is evaluated with HC1"]


def test_fid_and_clip_are_reported_as_skipped(report):
    out, data = report
    assert data["skipped"]["fid"].startswith("FID skipped: no Inception weights on disk")
    assert data["skipped"]["clip"].startswith("CLIP skipped: no --clip-model folder given")
    md = (out / "results.md").read_text()
    assert "FID skipped" in md and "CLIP skipped" in md
    assert "FID" not in md.split("\n| selection")[1].split("\n")[0]  # no column for a metric that did not run


def test_markdown_table_and_charts(report):
    out, data = report
    md = (out / "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`HC0`", "`HC1`", "`none`"]
    first = data["rows"][0]["metrics"]
    assert f"{first['psnr_grey']:.2f}" in rows[0] and f"{first['ssim_colour']:.4f}" in rows[0]
    for key in ("psnr_grey", "psnr_colour", "ssim_grey", "ssim_colour"):
        with Image.open(out / f"chart_{key}.png") as im:
            assert im.format == "PNG" and im.size[0] > 200
    assert not (out / "chart_fid.png").exists() and not (out / "chart_clip.png").exists()


def test_metrics_recomputed_independently_from_the_saved_files(report):
    """torchmetrics on the saved PNGs, paired by name, gives the reported per-image and mean values."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    out, data = report
    psnr, ssim = PeakSignalNoiseRatio(data_range=1.0), StructuralSimilarityIndexMeasure(data_range=1.0)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)
    for row in data["rows"]:
        values = []
        for entry in row["per_image"]:
            assert entry["generated"] == entry["reference"]
            g = _read(out / row["folder"] / entry["generated"])[None]
            r = _read(out / "reference" / entry["reference"])[None]
            gg, rg = (g * luma).sum(1, keepdim=True), (r * luma).sum(1, keepdim=True)
            want = {"psnr_colour": psnr(g, r).item(), "psnr_grey": psnr(gg, rg).item(),
                    "ssim_colour": ssim(g.float(), r.float()).item(), "ssim_grey": ssim(gg.float(), rg.float()).item()}
            for k, v in want.items():
                assert entry[k] == pytest.approx(v, abs=1e-3), (row["selection"], entry["generated"], k)
            values.append(entry)
        for k in ("psnr_grey", "ssim_colour"):
            assert row["metrics"][k] == pytest.approx(sum(e[k] for e in values) / len(values))


def test_the_control_changes_the_result(report):
    out, data = report
    folders = {r["selection"]: out / r["folder"] for r in data["rows"]}
    for name in ("0000-a.png", "0002-c.png"):
        assert (_read(folders["HC0"] / name) - _read(folders["none"] / name)).abs().max() > 2 / 255


def test_the_controlnet_gets_exactly_hint_input(files, monkeypatch):
    """The hint the ControlNet model receives is hint_input's output (29 x 29 at 32 px: ae.hint)."""
    from train import evaluate, sd15

    base = sd15.load_base(files["base"])
    control = evaluate.load_control(files["cn"], base, None, torch.device("cpu"), torch.float32)
    with recorded_hints(control.control.control_model) as seen:
        from train.cn_data import load_image

        image = load_image(f"{files['images']}/a.png", RES)[None]
        context = sd15.encode_text(base, ["x"])
        args = evaluate.build_parser().parse_args(_argv(files, files["root"] / "unused", "--steps", "1"))
        uncond = sd15.encode_text(base, [""])
        hc1 = evaluate.generate(base, control, "HC1", image, context, uncond, 0, args)
    want = control.ae.hint(image, "HC1")
    assert want.shape[-2:] == (29, 29)
    assert seen and all(h.shape[-2:] == (29, 29) and torch.allclose(h[:1].float(), want) for h in seen)
    hc0 = evaluate.generate(base, control, "HC0", image, context, uncond, 0, args)
    assert (hc0 - hc1).abs().max() > 1e-4  # the selection reaches the result


def test_command_line_errors_name_the_option(files, tmp_path, capsys):
    from train.evaluate import main

    argv = _argv(files, tmp_path / "o", "--groups", "HC0,HC99")
    assert main(argv) == 2
    assert "--groups: 'HC99': modules: unknown group 'HC99'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "samples").exists()  # refused before generating anything
    argv = _argv(files, tmp_path / "o", "--groups", "HC0,HC1")
    argv[argv.index("--controlnet") + 1] = "HC0=" + files["cn"]
    assert main(argv) == 2
    assert "--controlnet: no ControlNet for group 'HC1'" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    make_images(tmp_path / "bare", ["x.png"], captions=False)
    argv = _argv(files, tmp_path / "o", "--groups", "none")
    argv[argv.index("--images") + 1] = str(tmp_path / "bare")
    assert main(argv) == 2
    assert "no caption (first: x.png)" in capsys.readouterr().err
    argv[argv.index("--out") + 1] = str(tmp_path / "prompted")
    assert main([*argv, "--prompt", "a photo", "--steps", "1"]) == 0  # one prompt for all: no captions needed
    assert json.loads((tmp_path / "prompted" / "results.json").read_text())["settings"]["prompt"] == "a photo"


def test_the_authors_ckpt_gives_the_same_images_as_the_converted_file(files, report, tmp_path):
    """Per-group ControlNets load as Load SCG ControlNet loads them: the authors' .ckpt layout of the
    same weights (autoencoder embedded) generates bit-identical images; GROUP=PATH picks the file."""
    from train.evaluate import main

    ckpt = tmp_path / "authors_hc1.ckpt"
    as_authors_ckpt(files["cn"], ckpt)
    argv = _argv(files, tmp_path / "o", "--groups", "HC1", "--limit", "1")
    argv[argv.index("--controlnet") + 1] = f"HC1={ckpt}"
    assert main(argv) == 0
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["rows"][0]["controlnet"] == "authors_hc1.ckpt" and data["rows"][0]["n"] == 1
    out, _ = report
    got = np.asarray(Image.open(tmp_path / "o" / "samples" / "HC1" / "0000-a.png"))
    assert np.array_equal(got, np.asarray(Image.open(out / "samples" / "HC1" / "0000-a.png")))


def test_autoencoder_option_replaces_the_embedded_one(files, tmp_path):
    from scg_models import ModularAutoencoder, save_autoencoder
    from train import evaluate, sd15

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        other = ModularAutoencoder()
    save_autoencoder(other, tmp_path / "other.safetensors")
    base = sd15.load_base(files["base"])
    embedded = evaluate.load_control(files["cn"], base, None, torch.device("cpu"), torch.float32)
    replaced = evaluate.load_control(files["cn"], base, str(tmp_path / "other.safetensors"), torch.device("cpu"),
                                     torch.float32)
    image = torch.rand(1, 3, RES, RES)
    assert torch.equal(evaluate.hint_input(replaced, "HC0", image), other.hint(image, "HC0"))
    assert not torch.allclose(evaluate.hint_input(embedded, "HC0", image), other.hint(image, "HC0"))


def test_resume_keeps_written_images_and_refuses_other_settings(files, tmp_path, capsys):
    from train.evaluate import main

    out = tmp_path / "o"
    argv = _argv(files, out, "--groups", "none", "--limit", "2", "--steps", "1")
    assert main(argv) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["settings"]["generated"] == 2
    assert main(argv) == 2  # the same folder again, without --resume
    assert "already holds an evaluation (run.json); pass --resume" in capsys.readouterr().err
    kept = out / "samples" / "none" / "0000-a.png"
    stamp = kept.stat().st_mtime_ns
    (out / "samples" / "none" / "0001-b.png").unlink()  # as if interrupted
    assert main([*argv, "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["settings"]["generated"] == 1 and kept.stat().st_mtime_ns == stamp
    assert again["rows"][0]["metrics"] == first["rows"][0]["metrics"]  # same seeds: the same image again
    assert main([*argv[:-2], "--steps", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume: the run in" in err and "(steps changed)" in err


def test_fit_stretch_keeps_the_whole_image(files, tmp_path):
    from train.evaluate import load_original

    path = f"{files['images']}/a.png"  # 48 wide, 40 high
    crop, stretch = load_original(path, RES, "crop"), load_original(path, RES, "stretch")
    assert crop.shape == stretch.shape == (1, 3, RES, RES)
    full = _read(path)[None].float()
    want = torch.nn.functional.interpolate(full, size=(RES, RES), mode="bilinear", antialias=True)
    assert torch.allclose(stretch, want, atol=1e-6) and not torch.allclose(crop, stretch, atol=1e-2)

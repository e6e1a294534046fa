"""Scoring folders (no ComfyUI needed): pairing by sorted name, the CLIP path with a tiny local
CLIP model (random weights, never downloaded), and the FID skip messages."""
from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from train import evaluate, metrics


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """reference/{a,b,c}.png written in the order c, a, b; generated/x-{a,b,c}.png = reference + k/255
    with k = 1, 2, 4: the known PSNR of each pair tells whether the pairing is right."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no FID weights
    rng = np.random.default_rng(0)
    shift = {"a": 1, "b": 2, "c": 4}
    for stem in ("c", "a", "b"):
        ref = rng.integers(60, 190, (24, 20, 3))
        _save(tmp_path / "reference" / f"{stem}.png", ref)
        _save(tmp_path / "generated" / f"x-{stem}.png", ref + shift[stem])
    return tmp_path, shift


def test_pairs_by_sorted_name_and_known_psnr(folders):
    root, shift = folders
    result = evaluate.Scorer(root / "reference").score(root / "generated")
    assert result["n"] == 3
    assert [(p["generated"], p["reference"]) for p in result["per_image"]] == [
        ("x-a.png", "a.png"), ("x-b.png", "b.png"), ("x-c.png", "c.png")]
    for p in result["per_image"]:
        k = shift[p["reference"][0]]
        assert p["psnr_colour"] == pytest.approx(20 * math.log10(255 / k), abs=1e-9)
        assert p["psnr_grey"] > p["psnr_colour"] - 1  # a uniform shift: grey error = k/255 up to rounding
    assert result["metrics"]["psnr_colour"] == pytest.approx(
        sum(20 * math.log10(255 / k) for k in shift.values()) / 3)


def test_score_folders_from_the_command_line(folders, capsys):
    root, shift = folders
    out = root / "report"
    assert evaluate.main(["--score-folders", str(root / "reference"), str(root / "generated"), str(root / "reference"),
                          "--out", str(out), "--device", "cpu"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert [r["selection"] for r in data["rows"]] == ["generated", "reference"]
    assert data["rows"][0]["metrics"]["psnr_colour"] == pytest.approx(
        sum(20 * math.log10(255 / k) for k in shift.values()) / 3)
    assert data["rows"][1]["metrics"]["psnr_grey"] == "inf"  # identical images, strict JSON
    assert data["rows"][1]["metrics"]["ssim_colour"] == pytest.approx(1.0)
    md = (out / "results.md").read_text()
    assert "| `reference` | - | 3 | inf | inf | 1.0000 | 1.0000 |" in md
    assert (out / "chart_psnr_grey.png").is_file()
    assert evaluate.main(["--score-folders", str(root / "reference"), "--out", str(out)]) == 2
    assert "at least one folder of generated images" in capsys.readouterr().err
    assert evaluate.main(["--out", str(out)]) == 2
    assert "--checkpoint is required (or --score-folders" in capsys.readouterr().err


def test_folders_that_cannot_be_paired(folders):
    root, _ = folders
    (root / "generated" / "x-d.png").write_bytes((root / "generated" / "x-a.png").read_bytes())
    with pytest.raises(evaluate.SCGError, match=r"cannot pair .*generated \(4 images\) with .*reference \(3 images\)"):
        evaluate.Scorer(root / "reference").score(root / "generated")


def test_skipped_metrics_say_why(folders):
    root, _ = folders
    scorer = evaluate.Scorer(root / "reference")
    assert scorer.skipped["fid"].startswith("FID skipped: no Inception weights on disk")
    assert scorer.skipped["clip"].startswith("CLIP skipped: no --clip-model folder given")
    result = scorer.score(root / "generated")
    assert result["metrics"]["fid"] is None and result["metrics"]["clip"] is None


def test_fid_without_torch_fidelity_is_skipped_with_a_message(folders, monkeypatch):
    root, _ = folders
    monkeypatch.setattr(metrics, "_has_torch_fidelity", lambda: False)
    (root / "weights.pth").write_bytes(b"x")
    scorer = evaluate.Scorer(root / "reference", fid_weights=root / "weights.pth")
    assert scorer.skipped["fid"].startswith("FID skipped: torchmetrics' Inception needs the torch-fidelity package")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_fid_weights_must_be_plain_finite_tensors(tmp_path):
    torch.save({"w": _RunsCode()}, tmp_path / "code.pth")
    with pytest.raises(metrics.SCGError, match="--fid-weights: .*code.pth is not a plain PyTorch weights file"):
        metrics.check_weights_file(tmp_path / "code.pth", "--fid-weights")
    torch.save({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "nan.pth")
    with pytest.raises(metrics.SCGError, match="weight 'w' holds NaN or infinite values"):
        metrics.check_weights_file(tmp_path / "nan.pth", "--fid-weights")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(metrics.SCGError, match="is not a state dict of tensors"):
        metrics.check_weights_file(tmp_path / "list.pth", "--fid-weights")


def test_fid_weights_of_another_network_are_refused(tmp_path):
    pytest.importorskip("torch_fidelity", reason="FID PATH NOT TESTED: torch-fidelity is not installed")
    torch.save({"conv.weight": torch.zeros(2, 3, 1, 1)}, tmp_path / "other.pth")
    with pytest.raises(metrics.SCGError, match="other.pth does not fit torch-fidelity's Inception"):
        metrics.InceptionFeatures(tmp_path / "other.pth")


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """torch-fidelity's Inception with random weights (He-initialised convolutions), saved as the
    weights file --fid-weights takes. Its features mean nothing; the FID arithmetic is what is tested."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3",
                             reason="FID PATH NOT TESTED: torch-fidelity is not installed")
    cls = fe.FeatureExtractorInceptionV3
    mp = pytest.MonkeyPatch()
    mp.setattr(torch, "load", lambda *args, **kwargs: {})  # no weights to read: the random init stays
    mp.setattr(cls, "load_state_dict", lambda self, *args, **kwargs: None)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path="none")
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    finally:
        mp.undo()
    path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_fid_matches_torchmetrics_with_the_same_weights(folders, inception_weights):
    from torchmetrics.image.fid import FrechetInceptionDistance

    root, _ = folders
    scorer = evaluate.Scorer(root / "reference", fid_weights=inception_weights)
    assert "fid" not in scorer.skipped
    ours = scorer.score(root / "generated")["metrics"]["fid"]

    def uint8(folder):
        return torch.stack([(evaluate.read_png(p) * 255).round().to(torch.uint8)
                            for p in evaluate.sorted_images(folder)])

    tm = FrechetInceptionDistance(feature=scorer.fid.model)  # the same extractor; torchmetrics' own statistics
    tm.update(uint8(root / "reference"), real=True)
    tm.update(uint8(root / "generated"), real=False)
    want = float(tm.compute())
    assert math.isfinite(ours) and ours > 0
    assert ours == pytest.approx(want, rel=1e-3)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random transformers CLIPModel saved to a folder (what --clip-model takes)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                     "vocab_size": 100, "max_position_embeddings": 16},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.CLIPModel(cfg)
    folder = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(folder)
    return folder


def test_clip_from_a_local_folder_without_network(folders, tiny_clip, monkeypatch):
    root, _ = folders

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    scorer = evaluate.Scorer(root / "reference", clip_model=tiny_clip)
    assert "clip" not in scorer.skipped
    result = scorer.score(root / "generated")
    sims = [p["clip"] for p in result["per_image"]]
    assert all(0.0 <= s <= 1.0 for s in sims)
    assert result["metrics"]["clip"] == pytest.approx(sum(sims) / 3)
    self_sim = scorer.score(root / "reference")  # every image against itself
    assert self_sim["metrics"]["clip"] == pytest.approx(1.0, abs=1e-9)
    # independent: cosine of the model's own embeddings, mapped to [0, 1]
    clip = metrics.ClipImages(tiny_clip)
    a = clip.embed(evaluate.read_png(root / "generated" / "x-a.png")[None])
    b = clip.embed(evaluate.read_png(root / "reference" / "a.png")[None])
    assert sims[0] == pytest.approx(float((a @ b.T).item() + 1) / 2)

"""train.metrics against independent values: torchmetrics, scipy, PIL and hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from train import metrics


def _pair(seed: int, b=3, c=3, h=24, w=20, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    y = (x + noise * torch.randn(b, c, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, y


# --- PSNR --------------------------------------------------------------------------------
def test_psnr_of_a_known_mse():
    x = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1] -= 0.01  # MSE 1e-4 -> 40 dB
    assert metrics.psnr(x, y).tolist() == pytest.approx([20.0, 40.0], abs=1e-9)
    assert metrics.psnr(x * 255, y * 255, data_range=255.0).tolist() == pytest.approx([20.0, 40.0], abs=1e-9)


def test_psnr_of_identical_images_is_infinite():
    x = torch.rand(1, 3, 5, 5)
    assert metrics.psnr(x, x).item() == math.inf


def test_psnr_per_image_matches_torchmetrics():
    from torchmetrics.image import PeakSignalNoiseRatio

    x, y = _pair(1)
    ours = metrics.psnr(x, y)
    for i in range(len(x)):
        ref = PeakSignalNoiseRatio(data_range=1.0)(x[i:i + 1].float(), y[i:i + 1].float())
        assert ours[i].item() == pytest.approx(ref.item(), abs=1e-4)


# --- grey ------------------------------------------------------------------------------------
def test_grey_is_pils_bt601_luma():
    from PIL import Image

    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(arr).convert("L"), dtype=np.float64)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].double() / 255
    ours = metrics.to_grey(x)[0, 0].numpy() * 255
    assert np.abs(ours - pil).max() <= 0.5 + 1e-9  # PIL rounds to 8 bits
    assert metrics.to_grey(torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)).item() == pytest.approx(0.299)


# --- SSIM --------------------------------------------------------------------------------
def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 16, 16)
    assert metrics.ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_ssim_of_two_constant_images_by_hand():
    # constant a and b: variances and covariance vanish, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.2, 0.7
    x = torch.full((1, 1, 15, 15), a, dtype=torch.float64)
    y = torch.full((1, 1, 15, 15), b, dtype=torch.float64)
    c1 = 0.01 ** 2
    assert metrics.ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)


def test_gaussian_window():
    g = metrics.gaussian_window(11, 1.5)
    assert g.sum().item() == pytest.approx(1.0)
    assert g[5] / g[6] == pytest.approx(math.exp(1 / (2 * 1.5 ** 2)))
    assert torch.equal(g, g.flip(0))


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_torchmetrics(channels):
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    x, y = _pair(2, c=channels, h=32, w=27)
    ours = metrics.ssim(x, y)
    tm = StructuralSimilarityIndexMeasure(data_range=1.0, kernel_size=11, sigma=1.5, k1=0.01, k2=0.03,
                                          reduction="none")
    ref = tm(x.float(), y.float())
    assert ours.tolist() == pytest.approx(ref.double().tolist(), abs=2e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), noise=st.floats(0.0, 0.5))
def test_grey_and_colour_similarity_match_torchmetrics(seed, noise):
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    x, y = _pair(seed, b=1, h=16, w=16, noise=noise)
    y[..., 0, 0] = 1 - x[..., 0, 0]  # never identical
    got = metrics.similarity(y, x)
    ssim_tm = StructuralSimilarityIndexMeasure(data_range=1.0)
    grey = metrics.to_grey
    assert got["psnr_colour"].item() == pytest.approx(PeakSignalNoiseRatio(data_range=1.0)(y, x).item(), abs=1e-4)
    assert got["psnr_grey"].item() == pytest.approx(
        PeakSignalNoiseRatio(data_range=1.0)(grey(y), grey(x)).item(), abs=1e-4)
    assert got["ssim_colour"].item() == pytest.approx(ssim_tm(y.float(), x.float()).item(), abs=2e-5)
    assert got["ssim_grey"].item() == pytest.approx(ssim_tm(grey(y).float(), grey(x).float()).item(), abs=2e-5)


def test_shapes_are_checked():
    with pytest.raises(metrics.SCGError, match="same shape"):
        metrics.psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(metrics.SCGError, match="smaller than the 11 x 11 window"):
        metrics.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


# --- Frechet distance ----------------------------------------------------------------------
def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,d", [(50, 8), (40, 16)])
def test_frechet_distance_matches_scipy(n, d):
    rng = np.random.default_rng(d)
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n + 7, d)) @ rng.normal(size=(d, d)) * 0.5 + 0.3
    ours = metrics.fid_from_features(torch.from_numpy(a), torch.from_numpy(b))
    assert ours == pytest.approx(_scipy_fid(a, b), rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    # diag covariances: d = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    want = 1 + 0 + 4 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert metrics.frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(want)
    f = torch.randn(30, 5, dtype=torch.float64)
    assert metrics.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-8)


def test_feature_stats_use_the_unbiased_covariance():
    f = torch.randn(12, 4, dtype=torch.float64)
    mu, cov = metrics.feature_stats(f)
    assert torch.allclose(mu, f.mean(0))
    assert np.allclose(cov.numpy(), np.cov(f.numpy(), rowvar=False))


# --- skipped with a message ----------------------------------------------------------------
def test_fid_without_weights_is_skipped_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    assert metrics.find_fid_weights() is None
    with pytest.raises(metrics.MetricUnavailable, match="FID skipped: no Inception weights on disk.*--fid-weights"):
        metrics.InceptionFeatures(None)
    with pytest.raises(metrics.SCGError, match="--fid-weights: .*missing.pth is not a file"):
        metrics.find_fid_weights(tmp_path / "missing.pth")


def test_fid_weights_are_found_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    other = tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    other.write_bytes(b"not really")
    assert metrics.find_fid_weights() == other
    fidelity = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    fidelity.write_bytes(b"not really")
    assert metrics.find_fid_weights() == fidelity  # torch-fidelity's own file first


def test_clip_without_a_model_folder_is_skipped_with_a_message(tmp_path):
    with pytest.raises(metrics.MetricUnavailable, match="CLIP skipped: no --clip-model folder given"):
        metrics.ClipImages(None)
    with pytest.raises(metrics.MetricUnavailable, match="CLIP skipped: .* holds no config.json"):
        metrics.ClipImages(tmp_path)


def test_clip_similarity_range():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0]])
    assert metrics.clip_similarity(a, b).tolist() == pytest.approx([1.0, 0.0, 0.5])

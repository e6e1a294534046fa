"""Bad input is a clear error that names the problem -- never a silent wrong result."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scg_models
from scg_models import AutoencoderConfig, CheckpointError, ModularAutoencoder, SCGError, formats
from scg_testing.authors_files import ae_factors, save_authors_pth
from scg_testing.core import images, random_ae

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ae():
    return random_ae()


@pytest.mark.parametrize("x,match", [
    (torch.rand(1, 1, 64, 64), "got 1.*repeat it to RGB"),
    (torch.rand(1, 4, 64, 64), "got 4.*drop alpha"),
    (torch.rand(1, 64, 64, 3), "channels last"),
    (torch.rand(3, 64, 64), "4 dims.*add a batch dimension"),
    (torch.rand(1, 3, 16, 64), "smaller than the 21x21 kernel"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN or infinite"),
    (torch.rand(1, 3, 32, 32) * 255, "in \\[0, 1\\].*divide by 255"),
    ((torch.rand(1, 3, 32, 32) * 255).to(torch.uint8), "floats.*divide by 255"),
    ([[0.5]], "torch.Tensor"),
])
def test_bad_images(ae, x, match):
    with pytest.raises(SCGError, match=match):
        ae.check_images(x)  # the boundary check; ae.hint trusts what passed it


@pytest.mark.parametrize("modules,match", [
    ("", "empty"), ([], "empty"), ("HC42", "unknown group 'HC42'.*HC0, HC1"), ("0,16", "16 is out of range.*0..15"),
    ([-1], "out of range"), ("1,1", "repeat"), ([0.5, "x"], "integers"),
])
def test_bad_selection(ae, modules, match):
    with pytest.raises(SCGError, match=match):
        ae.hint(images(1, 32, 32), modules)


@pytest.mark.parametrize("gains,match", [
    ([1.0, 2.0], "got 2 values.*one per selected module \\(6: modules 0,1,4,8,9,15\\)"),
    ("0:x", "the gain of module 0 is 'x'; expected a number"),
    ("0=2", "cannot read '0=2'"), ("3:2", "module 3 has a gain but is not in the selection"),
    ([float("nan")] * 6, "value 1 is nan; gains must be finite"),
    ("nan", "the gain is nan; gains must be finite"), ("inf", "the gain is inf"), (float("-inf"), "is -inf"),
    ("1e308", "the gain is 1e\\+308; gains must lie in \\[-100, 100\\]"), (1e308, "must lie in"),
    ("HC0:1e30", "the gain of group HC0 is 1e\\+30; gains must lie in"), ("0:nan", "module 0 is nan"),
    ("1.5,2", "got 2 values; give one per selected module \\(6: modules 0,1,4,8,9,15\\).*module:gain pairs"),
    ("HC9:2,x:1", "'x' is neither a module index nor a group"), ({0: "a"}, "module 0 is 'a'"),
    ({"z": 1.0}, "'z' is not a module index"), (object(), "got object"), ([True] * 6, "expected a number"),
])
def test_bad_gains(ae, gains, match):
    with pytest.raises(SCGError, match=match):
        ae.hint(images(1, 32, 32), "HC0", gains)


def test_comma_joined_groups_suggest_plus(ae):
    with pytest.raises(SCGError, match="join groups with '\\+': 'HC0\\+HC1'"):
        ae.resolve_modules("HC0,HC1")
    with pytest.raises(SCGError, match="unknown group 'HC0,HC42'"):
        ae.resolve_modules("HC0,HC42")


def test_good_gains_text(ae):
    assert scg_models.parse_gains("1.5,2", [0, 3], 16) == [1.5, 2.0]
    assert scg_models.parse_gains(" 0:1.5; 3:-0.5 ", [0, 3], 16) == [1.5, -0.5]
    assert scg_models.parse_gains("HC1:2", [2, 3, 5], 16, ae.groups) == [2.0, 2.0, 1.0]
    assert scg_models.parse_gains(".5", [0, 3], 16) == [0.5, 0.5]
    assert scg_models.parse_gains(100, [0], 16) == [100.0]


def test_good_selections(ae):
    assert ae.resolve_modules("HC2+HC3") == [5, 12, 10]
    assert ae.resolve_modules(" 0, 1;4 ") == [0, 1, 4]
    assert ae.resolve_modules("all") == list(range(16))
    assert ae.resolve_modules(7) == [7]
    assert scg_models.parse_gains([2.0] * 16, [0, 3], 16) == [2.0, 2.0]
    assert scg_models.parse_gains({3: 0.5}, [0, 3], 16) == [1.0, 0.5]


def test_small_model_selection_too_big():
    tiny = ModularAutoencoder(AutoencoderConfig(n_vector=3, vector_length=2))
    with pytest.raises(SCGError, match="module index 5 is out of range; this autoencoder has 3 modules"):
        tiny.hint(images(1, 32, 32), "0,5")
    with pytest.raises(SCGError, match="unknown group 'HC0'.*M0, M1, M2"):
        tiny.hint(images(1, 32, 32), "HC0")


@pytest.mark.parametrize("cfg,match", [({"gonlin": "Bipolar2"}, "unknown factorisation"),
                                       ({"activation": "tanh"}, "activation"), ({"n_vector": 0}, "n_vector"),
                                       ({"std": (1, 0, 1)}, r"std\[1\]: 0.0 is not a finite number")])
def test_bad_config(cfg, match):
    with pytest.raises(SCGError, match=match):
        ModularAutoencoder(AutoencoderConfig(**cfg))


def test_missing_and_misshaped_weights(tmp_path):
    f = ae_factors()
    del f["c1_2_2.weight"]
    save_authors_pth(tmp_path / "a.pth", f)
    with pytest.raises(CheckpointError, match="'gonlin.c1_2_2.weight' is missing"):
        scg_models.load_autoencoder(tmp_path / "a.pth")
    f = ae_factors()
    f["c2.weight"] = torch.zeros(60, 1, 5, 5)
    save_authors_pth(tmp_path / "b.pth", f)
    with pytest.raises(CheckpointError, match="c2.weight.*shape \\(60, 1, 5, 5\\), expected \\(64, 1, 5, 5\\)"):
        scg_models.load_autoencoder(tmp_path / "b.pth")


def test_truncated_unknown_and_foreign_files(tmp_path):
    good = tmp_path / "good.safetensors"
    scg_models.save_autoencoder(random_ae(), good)
    data = good.read_bytes()
    for name, content, match in [
        ("trunc.safetensors", data[: len(data) // 2], "truncated"),
        ("empty.pth", b"", "empty or truncated"),
        ("text.pth", b"hello world, not a model", "unknown file format"),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=match):
            scg_models.load_autoencoder(tmp_path / name)
    pth = tmp_path / "ok.pth"
    save_authors_pth(pth, ae_factors())
    (tmp_path / "trunc.pth").write_bytes(pth.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        scg_models.load_autoencoder(tmp_path / "trunc.pth")
    torch.save({"state_dict": {"unet.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="no SCG autoencoder"):
        scg_models.load_autoencoder(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="cannot open"):
        scg_models.load_autoencoder(tmp_path / "missing.safetensors")


def test_gonlin_mismatch_between_arg_and_weights(tmp_path):
    from scg_testing.authors_files import authors_arg

    save_authors_pth(tmp_path / "m.pth", ae_factors(), authors_arg(gonlin="Vanilla_2layer"))
    with pytest.raises(CheckpointError, match="arg.gonlin is 'Vanilla_2layer'"):
        scg_models.load_autoencoder(tmp_path / "m.pth")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "out.safetensors"
    scg_models.save_autoencoder(random_ae(seed=1), path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(formats, "save_file", boom)
    with pytest.raises(SCGError, match="out.safetensors: cannot write"):
        scg_models.save_autoencoder(random_ae(seed=2), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_cli_extract_and_errors(tmp_path):
    import numpy as np
    from PIL import Image

    model = tmp_path / "ae.safetensors"
    scg_models.save_autoencoder(random_ae(), model)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "scg_models", "extract", str(tmp_path / "img0.png"),
                        str(tmp_path / "img1.png"), str(tmp_path / "broken.png"), "--groups", "HC0,HC3",
                        "--model", str(model), "--grid", "-o", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and "broken.png" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "img0_HC0.png", "img0_HC3.png", "img0_groups.png", "img1_HC0.png", "img1_HC3.png", "img1_groups.png"]
    sheet = np.asarray(Image.open(out / "img0_groups.png"))
    assert sheet.shape == (45, 3 * 37 + 2 * 4, 3)  # input, HC0, HC3 side by side
    prev = np.asarray(Image.open(out / "img0_HC3.png"))
    assert prev.shape == (45, 37, 3) and prev.min() == 0 and prev.max() == 255
    r = subprocess.run([sys.executable, "-m", "scg_models", "extract", str(tmp_path / "img0.png"), "--groups", "HC99",
                        "--model", str(model), "-o", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown group 'HC99'" in r.stderr and "Traceback" not in r.stderr


def test_cli_bench_runs_small():
    r = subprocess.run([sys.executable, "-m", "scg_models", "bench", "--size", "96", "--repeats", "2"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith(("HC0", "HC3", "all"))]
    assert [row[0] for row in rows] == ["HC0", "HC3", "all"]
    assert all(float(row[-1]) < 1e-5 for row in rows)  # max relative difference to the authors' way

"""The tuning analysis on hand-made kernels whose answers are known, the derived groups, and
the ``train.analyze`` command line."""
import json
import math

import torch

import scg_models
from scg_models import AutoencoderConfig, ModularAutoencoder
from scg_models.analysis import derive_groups, module_tuning, summary
from train import analyze

K = 21


def _gabor(theta, sf=0.12, sigma=4.0, phase=0.0):
    c = torch.arange(K, dtype=torch.float32) - K // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    u = x * math.cos(theta) + y * math.sin(theta)
    return torch.exp(-(x**2 + y**2) / (2 * sigma**2)) * torch.cos(2 * math.pi * sf * u + phase)


def _blob(sigma):
    c = torch.arange(K, dtype=torch.float32) - K // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.exp(-(x**2 + y**2) / (2 * sigma**2))


def handmade() -> ModularAutoencoder:
    """Module 0: luminance Gabors at 4 orientations; 1: red-green blobs; 2: luminance
    centre-surround (isotropic); 3: blue-yellow oriented."""
    ae = ModularAutoencoder(AutoencoderConfig(gonlin="Vanilla", kernel_size=K, n_vector=4, vector_length=4, groups=[]))
    std = ae.std.view(3, 1, 1)
    lum = torch.ones(3, 1, 1)
    rg, by = torch.tensor([1.0, -1, 0]).view(3, 1, 1), torch.tensor([1.0, 1, -2]).view(3, 1, 1)
    w = torch.zeros(16, 3, K, K)
    for c in range(4):
        w[c] = lum * _gabor(c * math.pi / 4, phase=c * 0.5)
        w[4 + c] = rg * _blob(2.0 + c) * (1 if c % 2 else -1)
        w[8 + c] = lum * (_blob(1.5) - 0.5 * _blob(3.0 + 0.3 * c))
        w[12 + c] = by * _gabor(c * math.pi / 4, sf=0.06, sigma=5.0)
    ae.gonlin.c1.weight.data.copy_(w * std)  # kernels on normalised input = RGB weights x std
    return ae


def test_tuning_of_known_kernels():
    ae = handmade()
    t = module_tuning(ae)
    assert t[0].chroma < 0.01 and t[0].osi > 0.8 and t[0].kind == "oriented"
    assert sorted(round(o) for o in t[0].pref_orientation) == [0, 45, 90, 135]
    assert abs(t[0].pref_sf - 0.12) < 0.03 and t[0].colour_dir == ["lum"] * 4
    assert t[1].chroma > 0.99 and t[1].osi < 0.1 and t[1].kind == "colour" and t[1].colour_dir == ["rg"] * 4
    assert t[2].chroma < 0.01 and t[2].osi < 0.1 and t[2].kind == "luminance"
    assert t[3].chroma > 0.99 and t[3].osi > 0.8 and t[3].colour_dir == ["by"] * 4
    s = summary(t)
    assert (s["colour_modules"], s["luminance_modules"], s["oriented_modules"]) == (2, 2, 2)


def test_derived_groups_partition_the_modules():
    ae = handmade()
    groups = {g["name"]: g["modules"] for g in derive_groups(ae)}
    assert groups["HC0"] == [1, 3] and groups["colour"] == [1, 3]
    assert groups["HC1"] == [2] and groups["HC3"] == [0]
    assert groups["structure"] == [0, 2] and groups["edges"] == [0] and groups["brightness"] == [2]
    ae.set_groups(derive_groups(ae))  # valid for the core (names unique, modules in range)
    assert ae.resolve_modules("HC1+HC3") == [2, 0]


def test_analyze_command_line(tmp_path, capsys):
    ae = handmade()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    scg_models.save_autoencoder(ae, a, info={"steps": 1})
    scg_models.save_autoencoder(ae, b, info={"steps": 2})
    assert analyze.main([str(a), str(b), "--png", str(tmp_path / "t.png"), "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "oriented modules (OSI >= 0.5)" in text and "a.safetensors" in text and "b.safetensors" in text
    assert (tmp_path / "t.0.png").stat().st_size > 1000 and (tmp_path / "t.1.png").exists()
    r = json.loads((tmp_path / "r.json").read_text())
    assert r[str(a)]["summary"]["oriented_modules"] == 2
    # groups: derived into the file, or given by the user
    assert analyze.main([str(a), "--write-groups", "--no-png"]) == 0
    assert scg_models.load_autoencoder(a).groups["HC3"] == [0]
    g = tmp_path / "g.json"
    g.write_text(json.dumps([{"name": "edges", "modules": [0], "description": "mine"}]))
    assert analyze.main([str(a), "--write-groups", "--groups", str(g), "--no-png"]) == 0
    ae2 = scg_models.load_autoencoder(a)
    assert dict(ae2.groups) == {"edges": [0]} and ae2.config.info["steps"] == 1
    assert torch.equal(ae2.kernel(), ae.kernel())

"""Fixtures of the ControlNet-trainer tier (``tests/train_controlnet``).

Every test here needs a ComfyUI checkout (``@pytest.mark.host``; found as ``tests/find_host.py``
says) and is SKIPPED loudly without one. The base model is a tiny SD1.5-architecture UNet
(64 channels: the smallest width ComfyUI's generic ControlNet loader accepts), a tiny CLIP
text model and a TAESD VAE, built with ComfyUI's classes and saved as a spec checkpoint
(``train.sd15.save_spec_checkpoint``) that ``--base`` takes. No downloads.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from cnhelp import ROOT, TINY_SPEC, make_images  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from find_host import find_host  # noqa: E402

sys.path.remove(str(ROOT / "tests"))

HOST = find_host()
SKIP_REASON = ("CONTROLNET TRAINER TESTS SKIPPED: no ComfyUI checkout ($COMFYUI_PATH, the ComfyUI holding this "
               "folder in custom_nodes/, ~/comfy/ComfyUI)")
_skipped: list[str] = []


def pytest_collection_modifyitems(config, items):
    if HOST is not None:
        return
    for item in items:
        if item.get_closest_marker("host") is not None and "train_controlnet" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            if not _skipped:
                _skipped.append(SKIP_REASON)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for reason in _skipped:
        terminalreporter.write_sep("!", "ControlNet trainer tests skipped", yellow=True, bold=True)
        terminalreporter.write_line(reason, yellow=True, bold=True)


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI imported on the CPU; torch on one thread (the test machines are shared and small)."""
    from train import sd15

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sd15.import_comfy(HOST, cpu=True)
    yield HOST
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def files(comfy, tmp_path_factory):
    """Paths of the tiny base checkpoint, an autoencoder file and a 5-image data folder."""
    from scg_models import ModularAutoencoder, save_autoencoder
    from train import sd15

    root = tmp_path_factory.mktemp("cn")
    base = sd15.build_from_spec(TINY_SPEC, seed=0)
    sd15.save_spec_checkpoint(base, root / "tiny_sd15.safetensors")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ae = ModularAutoencoder()
    save_autoencoder(ae, root / "ae.safetensors")
    make_images(root / "data", 5)
    return {"root": root, "base": str(root / "tiny_sd15.safetensors"), "ae": str(root / "ae.safetensors"),
            "data": str(root / "data"), "comfyui": HOST}

"""Fixtures of the ControlNet-trainer tier (``tests/trainer_controlnet``).

Every test here needs a ComfyUI checkout (``@pytest.mark.host``; found as ``scg_testing.hosts``
says) and is SKIPPED loudly without one. The base model is a tiny SD1.5-architecture UNet
(64 channels: the smallest width ComfyUI's generic ControlNet loader accepts), a tiny CLIP
text model and a TAESD VAE, built with ComfyUI's classes (``scg_testing.tiny_sd15``) and saved
as a checkpoint file that ``--base`` takes. No downloads.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scg_testing.hosts import find_host
from scg_testing.trainers import make_images

HOST = find_host()
SKIP_REASON = ("CONTROLNET TRAINER TESTS SKIPPED: no ComfyUI checkout ($COMFYUI_PATH, the ComfyUI holding this "
               "folder in custom_nodes/, ~/comfy/ComfyUI)")
_skipped: list[str] = []


def pytest_collection_modifyitems(config, items):
    if HOST is not None:
        return
    here = Path(__file__).parent
    for item in items:
        if item.get_closest_marker("host") is not None and Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            if not _skipped:
                _skipped.append(SKIP_REASON)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for reason in _skipped:
        terminalreporter.write_sep("!", "ControlNet trainer tests skipped", yellow=True, bold=True)
        terminalreporter.write_line(reason, yellow=True, bold=True)


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI imported on the CPU, the tiny-base hook installed; torch on one thread."""
    from scg_testing import tiny_sd15
    from train import sd15

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sd15.import_comfy(HOST, cpu=True)
    tiny_sd15.install()
    yield HOST
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def files(comfy, tmp_path_factory):
    """Paths of the tiny base checkpoint, an autoencoder file and a 5-image data folder."""
    from scg_models import ModularAutoencoder, save_autoencoder
    from scg_testing import tiny_sd15

    root = tmp_path_factory.mktemp("cn")
    tiny_sd15.save_checkpoint(tiny_sd15.build_base(seed=0), root / "tiny_sd15.safetensors")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ae = ModularAutoencoder()
    save_autoencoder(ae, root / "ae.safetensors")
    make_images(root / "data", 5)
    return {"root": root, "base": str(root / "tiny_sd15.safetensors"), "ae": str(root / "ae.safetensors"),
            "data": str(root / "data"), "comfyui": HOST}

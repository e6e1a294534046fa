"""Which ComfyUI the host tests use; reports the skip of the whole tier when there is none."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from find_host import find_host  # noqa: E402

sys.path.remove(str(Path(__file__).resolve().parents[1]))


def test_host_is_found():
    host = find_host()
    if host is None:
        pytest.skip("no ComfyUI host found ($COMFYUI_PATH, the ComfyUI that holds this extension in custom_nodes/, "
                    "~/comfy/ComfyUI): the host tests are SKIPPED")
    assert (host / "nodes.py").is_file() and (host / "comfy" / "model_management.py").is_file()


def test_comfyui_path_wins(tmp_path, monkeypatch):
    fake = tmp_path / "ComfyUI"
    (fake / "comfy").mkdir(parents=True)
    (fake / "comfy" / "model_management.py").write_text("")
    (fake / "nodes.py").write_text("")
    monkeypatch.setenv("COMFYUI_PATH", str(fake))
    assert find_host() == fake.resolve()
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nowhere"))
    assert find_host() != tmp_path / "nowhere"

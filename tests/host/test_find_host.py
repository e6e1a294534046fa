"""Which ComfyUI the host tests use; reports the skip of the whole tier when there is none."""
import os
from pathlib import Path

import pytest

from scg_testing import hosts


def make_host(path):
    (path / "comfy").mkdir(parents=True)
    (path / "comfy" / "model_management.py").write_text("")
    (path / "nodes.py").write_text("")
    return path


def test_host_is_found():
    host = hosts.find_host()
    if host is None:
        pytest.skip("no ComfyUI host found: the whole host tier is SKIPPED (see tests/host/conftest.py)")
    assert hosts.is_host(host)
    if os.environ.get("COMFYUI_PATH"):
        assert host == Path(os.environ["COMFYUI_PATH"]).resolve()


def test_comfyui_path_wins(tmp_path, monkeypatch):
    fake = make_host(tmp_path / "ComfyUI")
    monkeypatch.setenv("COMFYUI_PATH", str(fake))
    assert hosts.find_host() == fake.resolve()


def test_a_comfyui_path_without_comfyui_falls_back(tmp_path, monkeypatch):
    home = tmp_path / "home"
    fallback = make_host(home / "ComfyUI")
    monkeypatch.setattr(hosts, "COMFY_HOME", home)
    monkeypatch.setattr(hosts, "ROOT", tmp_path / "not_in_custom_nodes" / "pack")
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nowhere"))
    assert hosts.find_host() == fallback.resolve()  # the fallback, never the path that holds no ComfyUI
    monkeypatch.setattr(hosts, "COMFY_HOME", tmp_path / "empty")
    assert hosts.find_host() is None


def test_the_comfyui_holding_the_pack_comes_before_the_default(tmp_path, monkeypatch):
    holder = make_host(tmp_path / "MyComfy")
    make_host(tmp_path / "home" / "ComfyUI")
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(hosts, "COMFY_HOME", tmp_path / "home")
    monkeypatch.setattr(hosts, "ROOT", holder / "custom_nodes" / "scg")
    assert hosts.find_host() == holder.resolve()

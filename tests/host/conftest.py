"""Host tier: a real ComfyUI, imported in-process once per session, with this pack loaded by its own loader.

The host is :func:`scg_testing.hosts.find_host` (``$COMFYUI_PATH`` first). Without one every
``test_host_*.py`` module is left out (they import ComfyUI) and ``test_find_host.py`` reports the
skip with its reason, so ``-rs`` shows it loudly.
"""
import asyncio
import logging
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from scg_testing import torchaudio_stub
from scg_testing.hosts import find_host

ROOT = Path(__file__).resolve().parents[2]
HOST = find_host()
NO_HOST = ("no ComfyUI host found ($COMFYUI_PATH, the ComfyUI that holds this extension in custom_nodes/, "
           "~/comfy/ComfyUI): the host tests are SKIPPED")


if HOST is None:
    collect_ignore_glob = ["test_host_*.py"]
else:
    # The one sys.path edit of the test suite, and an unavoidable one: ComfyUI is not an installable
    # package; its top-level modules (comfy, nodes, execution, folder_paths...) are importable only
    # from its checkout, as they are when ComfyUI runs. It goes first, so ComfyUI's nodes.py wins.
    if str(HOST) not in sys.path:
        sys.path.insert(0, str(HOST))
    torchaudio_stub.install()
    from comfy.cli_args import args  # must come before anything imports comfy.model_management

    args.cpu = True


def pytest_report_header(config):
    if HOST is None:
        return f"!!! {NO_HOST}"
    stub = "torchaudio" in sys.modules and sys.modules["torchaudio"].__spec__.origin is None
    return f"ComfyUI host: {HOST}" + (" (!!! torchaudio is a stub)" if stub else "")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.host)


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """The host's modules, this pack (loaded with ``nodes.load_custom_node``) and temp dirs.

    Output, temp and input dirs point into a temp folder, and temp model folders are put
    first in ComfyUI's search paths, so nothing is written into the ComfyUI checkout.
    """
    if HOST is None:
        pytest.skip(NO_HOST)
    import comfy.model_management  # noqa: F401
    import execution
    import folder_paths

    import nodes

    base = tmp_path_factory.mktemp("comfy")
    dirs = SimpleNamespace(base=base)
    for name in ("output", "temp", "input"):
        setattr(dirs, name, base / name)
        (base / name).mkdir()
    folder_paths.set_output_directory(str(dirs.output))
    folder_paths.set_temp_directory(str(dirs.temp))
    folder_paths.set_input_directory(str(dirs.input))
    dirs.models = {}
    for kind in ("checkpoints", "controlnet", "scg", "vae"):
        d = base / "models" / kind
        d.mkdir(parents=True)
        dirs.models[kind] = d

    assert asyncio.run(nodes.load_custom_node(str(ROOT), module_parent="custom_nodes")), "pack failed to load"
    canny = HOST / "comfy_extras" / "nodes_canny.py"
    asyncio.run(nodes.load_custom_node(str(canny), module_parent="comfy_extras"))
    for kind, d in dirs.models.items():  # after the pack registered models/scg
        folder_paths.add_model_folder_path(kind, str(d), is_default=True)
    shutil.copy(ROOT / "workflows" / "scg_example.jpg", dirs.input / "scg_example.jpg")
    logging.getLogger().setLevel(logging.INFO)
    return SimpleNamespace(nodes=nodes, execution=execution, folder_paths=folder_paths, dirs=dirs,
                           pack=sys.modules[str(ROOT).replace(".", "_x_")], root=ROOT, path=HOST)


@pytest.fixture(scope="session")
def node(host):
    """Node class by id, from the host's registry."""
    return lambda node_id: host.nodes.NODE_CLASS_MAPPINGS[node_id]


@pytest.fixture()
def scg_ae(host, ae):
    """What travels on an SCG_AUTOENCODER link, for the module's own ``ae`` fixture."""
    return host.pack.nodes.common.SCGAutoencoder(ae, "test-ae")


@pytest.fixture(scope="session")
def scg_error(host):
    """SCGError for ``pytest.raises``: the pack's class as the host loaded it (a module named by its path)
    and the one the tests import as ``scg_models`` (their autoencoders raise that one)."""
    import scg_models

    return host.pack.scg_models.SCGError, scg_models.SCGError

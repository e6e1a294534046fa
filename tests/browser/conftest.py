"""pytest setup for the headless-browser tests in tests/browser.

* registers the ``browser`` marker;
* skips every ``@pytest.mark.browser`` test, with a loud reason, when the ComfyUI
  host ($COMFYUI_PATH, the ComfyUI holding this repo in custom_nodes/, else
  ~/comfy/ComfyUI) or /usr/bin/chromium + /usr/bin/chromedriver are missing
  (install those with ``.ci/install-browser.sh``);
* makes ``import harness`` work whatever import mode pytest runs in;
* keeps pytest from importing the repo root's ComfyUI ``__init__.py`` (see below).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import harness  # noqa: E402

_SKIPPED_REASONS: set[str] = set()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "browser: drives ComfyUI's real frontend in headless Chromium "
        "(needs a ComfyUI checkout and /usr/bin/chromium + /usr/bin/chromedriver)",
    )


def _skip_reason() -> str | None:
    reasons = [r for r in (harness.host_skip_reason(), harness.browser_skip_reason()) if r]
    return "BROWSER TEST SKIPPED: " + "; ".join(reasons) if reasons else None


_REPO_ROOT = _HERE.parents[1]


def _do_not_import_repo_root_package(items) -> None:
    """Keep pytest from importing the repo root's ``__init__.py``.

    The repo root is a ComfyUI custom-node pack, so it has an ``__init__.py`` that
    imports ComfyUI (``comfy_api``). pytest (8+) collects a directory with an
    ``__init__.py`` as a ``Package`` and imports that file in ``Package.setup()``
    before the first test runs, which fails outside ComfyUI (a root conftest.py
    cannot prevent it: importing that conftest imports the package too). Nothing
    a test needs is in that import, so the root package's setup is made a no-op.
    The Package node is shared, so this also holds for the other tests collected
    in the same run. The real fix belongs in the root ``__init__.py`` (import
    ComfyUI only when running inside it); this is then a harmless no-op.
    """
    done = set()
    for item in items:
        for node in item.listchain():
            if isinstance(node, pytest.Package) and Path(node.path) == _REPO_ROOT and id(node) not in done:
                done.add(id(node))
                node.setup = lambda: None


def pytest_collection_modifyitems(config, items):
    _do_not_import_repo_root_package([i for i in items if i.get_closest_marker("browser")])
    reason = None
    checked = False
    for item in items:
        if item.get_closest_marker("browser") is None:
            continue
        if not checked:
            reason, checked = _skip_reason(), True
        if reason:
            _SKIPPED_REASONS.add(reason)
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for reason in sorted(_SKIPPED_REASONS):
        terminalreporter.write_sep("!", "browser tests skipped", yellow=True, bold=True)
        terminalreporter.write_line(reason, yellow=True, bold=True)

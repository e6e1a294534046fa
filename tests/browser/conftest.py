"""The browser tier: ComfyUI's real server and frontend in Debian's headless Chromium.

Every test here is marked ``browser`` and skipped, with one loud line in the summary, when the host of this
run, its frontend or /usr/bin/chromium + /usr/bin/chromedriver are missing (``.ci/install-browser.sh``
installs those). The harness is ``scg_testing.browser``; its page scripts are ``tests/browser/js/*.js``.
"""
from __future__ import annotations

import pytest

from scg_testing import browser

_SKIPPED: set[str] = set()


def pytest_collection_modifyitems(config, items):
    ours = [i for i in items if i.get_closest_marker("browser")]
    if ours and (reason := browser.skip_reason()):
        _SKIPPED.add(reason)
        for item in ours:
            item.add_marker(pytest.mark.skip(reason=f"BROWSER TEST SKIPPED: {reason}"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for reason in sorted(_SKIPPED):
        terminalreporter.write_sep("!", "browser tests skipped", yellow=True, bold=True)
        terminalreporter.write_line(reason, yellow=True, bold=True)

#!/usr/bin/env bash
# Install what the browser tests (tests/browser) need: the distro's Chromium and
# chromedriver, plus the Selenium Python client. Idempotent: apt only runs when a
# binary is missing, pip only when selenium is not importable.
# Nothing here (and nothing at test time) downloads a browser of its own.
#
# Usage: .ci/install-browser.sh            (uses the `python` on PATH, e.g. an active venv)
#        PYTHON=/path/to/python .ci/install-browser.sh
set -euo pipefail

PYTHON="${PYTHON:-python}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "[install-browser] installing chromium + chromium-driver via apt-get"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium chromium-driver
else
    echo "[install-browser] /usr/bin/chromium and /usr/bin/chromedriver already present"
fi

if "$PYTHON" -c "import selenium" >/dev/null 2>&1; then
    echo "[install-browser] selenium already installed: $("$PYTHON" -c 'import selenium; print(selenium.__version__)')"
else
    echo "[install-browser] pip install selenium"
    "$PYTHON" -m pip install "selenium>=4.10"
fi

/usr/bin/chromium --version || true
/usr/bin/chromedriver --version || true

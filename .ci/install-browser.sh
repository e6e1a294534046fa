#!/usr/bin/env bash
# Install what the browser tests (tests/browser) need: Debian's Chromium and its
# chromedriver. Idempotent: apt only runs when /usr/bin/chromium or
# /usr/bin/chromedriver is missing.
#
# No Python package is needed: tests/lib/scg_testing/browser.py speaks the W3C WebDriver
# HTTP protocol to /usr/bin/chromedriver with the standard library, so this works
# whichever venv the tests later run in, and nothing downloads a browser of its own.
set -euo pipefail

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

# the Debian launcher script prints a harmless '[: ...: unexpected operator' line here
/usr/bin/chromium --version 2>/dev/null || true
/usr/bin/chromedriver --version || true

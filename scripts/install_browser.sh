#!/usr/bin/env bash
# Installs a headless-capable Chromium for tests/http/test_web_page_browser.py (and tests/frontends/test_gradio_page_browser.py) (Debian/Ubuntu packages).
# The test skips itself when no Chromium is found, so this is only needed where the page should be checked.
#   scripts/install_browser.sh      installs `chromium` unless chromium or chromium-browser is already on PATH
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium || command -v chromium-browser)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
chromium --version

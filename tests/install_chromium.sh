#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (tests/app/test_browser.py), if it is missing.
# Playwright drives it through executable_path="/usr/bin/chromium"; `playwright install`
# (which downloads its own browser builds) is never used.
#   bash tests/install_chromium.sh
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium is already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "error: /usr/bin/chromium is missing and this user is not root and has no sudo;" >&2
    echo "       ask an administrator to run: apt-get update && apt-get install -y chromium" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core
/usr/bin/chromium --version

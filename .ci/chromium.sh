#!/usr/bin/env bash
# Headless Chromium for the report test (tests open `derma report`'s HTML in a real browser).
# Installs Debian's chromium package when /usr/bin/chromium is missing. Prints its path.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then command -v chromium; exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium.sh: chromium not found and apt-get is unavailable; install Chromium" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "chromium.sh: need root (or sudo) to apt-get install chromium" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
$SUDO apt-get install -y -q --no-install-recommends chromium >&2
command -v chromium

#!/usr/bin/env bash
# Create .venv and install Raycart with its dev extras. Idempotent: when pyproject.toml and the
# Python version are unchanged and the packages import, it returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMP=.venv/.raycart-setup

# Chromium (Debian's package) for the shop page's browser test, driven by Playwright without
# downloading a browser; installed when missing and we are root (CI), else a loud note
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    mkdir -p .venv
    echo "setup: installing chromium (apt-get; log: .venv/apt-chromium.log)"
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
        > .venv/apt-chromium.log 2>&1; then
      tail -20 .venv/apt-chromium.log
      echo "setup: !!! apt-get install chromium failed: the browser test (tests/integration/test_shop_page.py) will skip, and fail under CI=true !!!" >&2
    fi
  else
    echo "setup: !!! chromium is missing and this is not root: run 'sudo apt-get install -y chromium', or the browser test (tests/integration/test_shop_page.py) skips (and fails under CI=true) !!!" >&2
  fi
fi
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$PY" --version 2>&1)"
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && .venv/bin/python -c "import training, ray, torch, torchvision, pyarrow" 2>/dev/null; then
  echo "setup: .venv is up to date"
  exit 0
fi
echo "setup: installing Raycart into .venv (first run takes a few minutes)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
LOG=.venv/setup.log
if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e ".[dev]"; } > "$LOG" 2>&1; then
  tail -40 "$LOG"
  echo "setup: pip install failed (full log: $LOG)" >&2
  exit 1
fi
echo "$WANT" > "$STAMP"
echo "setup: done"

#!/usr/bin/env bash
# Create .venv and install Raycart with its dev extras. Idempotent: when pyproject.toml and the
# Python version are unchanged and the packages import, it returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMP=.venv/.raycart-setup
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

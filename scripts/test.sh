#!/usr/bin/env bash
# The test command: set up (idempotent), lint for errors (ruff), then the CPU test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # Headless Chromium opens report.html in tests/test_report.py (skipped, with the reason, without it).
  ($SUDO apt-get update -q && $SUDO apt-get install -y -q chromium) >/dev/null \
    || echo "test: could not install chromium; the HTML report test will be skipped"
fi
.venv/bin/ruff check glann tests scripts
exec .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# The test command: set up (idempotent), lint for errors (ruff), then the CPU test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check glann tests scripts
exec .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# The main job: set up, train GLANN on Fashion-MNIST with a small budget, write a sample grid.
# Run again with the same RUN_NAME and it continues that run: its saved config with these epochs on
# top (more GLO_EPOCHS or IMLE_EPOCHS train on; the same ones just re-export).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
NAME=${RUN_NAME:-fashion_mnist}
RESUME=()
[ -f "runs/$NAME/config.yaml" ] && RESUME=(--resume)
.venv/bin/glann train configs/fashion_mnist.yaml name="$NAME" glo.epochs="${GLO_EPOCHS:-5}" \
  imle.epochs="${IMLE_EPOCHS:-5}" "${RESUME[@]}" "$@"
.venv/bin/glann sample "runs/$NAME" -n 64 --seed 0 -o "runs/$NAME/grid.png"

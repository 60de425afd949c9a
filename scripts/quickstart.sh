#!/usr/bin/env bash
# The main job: set up, train GLANN on Fashion-MNIST for a time budget (default 510 s of training,
# 10-12 minutes in all on a 2-core CPU), write a sample grid. GLANN splits the budget between GLO and
# IMLE itself. Run again with the same RUN_NAME and it continues that run (a larger MAX_SECONDS
# trains on; the same one just re-exports). GLO_EPOCHS / IMLE_EPOCHS, when set, cap the stages too.
set -euo pipefail
cd "$(dirname "$0")/.."
GLANN_EXTRAS=${GLANN_EXTRAS:-faiss-cpu,lpips} bash scripts/setup.sh  # the tests add their tools later
NAME=${RUN_NAME:-fashion_mnist}
RESUME=()
[ -f "runs/$NAME/config.yaml" ] && RESUME=(--resume)
EPOCHS=()
[ -n "${GLO_EPOCHS:-}" ] && EPOCHS+=(glo.epochs="$GLO_EPOCHS")
[ -n "${IMLE_EPOCHS:-}" ] && EPOCHS+=(imle.epochs="$IMLE_EPOCHS")
.venv/bin/glann train configs/fashion_mnist.yaml name="$NAME" max_seconds="${MAX_SECONDS:-510}" \
  "${EPOCHS[@]}" "${RESUME[@]}" "$@"
.venv/bin/glann sample "runs/$NAME" -n 64 --seed 0 -o "runs/$NAME/grid.png"

#!/usr/bin/env bash
# The main job: set up, train GLANN on Fashion-MNIST with a small budget, write a sample grid.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/glann train configs/fashion_mnist.yaml glo.epochs=${GLO_EPOCHS:-5} imle.epochs=${IMLE_EPOCHS:-5} "$@"
.venv/bin/glann sample runs/fashion_mnist -n 64 --seed 0 -o runs/fashion_mnist/grid.png

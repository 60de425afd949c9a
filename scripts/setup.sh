#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Fashion-MNIST from Debian, a venv with torch, faiss and glann.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # Best effort: without the Debian package, glann falls back to torchvision's download when online.
  ($SUDO apt-get update -q && $SUDO apt-get install -y -q dataset-fashion-mnist) >/dev/null \
    || echo "setup: could not install dataset-fashion-mnist; glann will try torchvision's download"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first, pinned, so that resolving glann's range never pulls a newer multi-GB build.
# pip's own failure still fails the script (pipefail); only the filter's "no lines" status is ignored.
quiet() { { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
.venv/bin/pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.14.1}" "${TORCHVISION_SPEC:-torchvision==0.29.1}" 2>&1 | quiet
# GLANN_EXTRAS: the tests' tools by default; the quickstart takes the runtime stack alone (faiss, lpips).
.venv/bin/pip install -q --disable-pip-version-check -e ".[${GLANN_EXTRAS:-dev}]" 2>&1 | quiet
.venv/bin/python -c "import glann, torch; print(f'setup: glann {glann.__version__}, torch {torch.__version__}')"

#!/usr/bin/env bash
# Set up phototag on a fresh machine: a virtual environment in .venv with phototag and its test tools.
# Idempotent: re-running only installs what changed. Works offline except for PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch + torchvision first, pinned: newer unpinned builds would pull several GB of CUDA packages from the index.
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[dev,formats]"
# Best effort (never fails the setup): chromium, chromedriver and exiftool for the browser and XMP tests.
bash scripts/install_system_tools.sh
echo "phototag installed in .venv ($(.venv/bin/phototag --version))"

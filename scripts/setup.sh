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
# Training and the tests need torch. Tagging does not: `pip install phototag` alone runs on ONNX Runtime.
# PyPI (the only index reachable here) has CPU-only torch wheels for aarch64 and macOS, but for Linux x86_64 only
# CUDA builds, which pull ~15 nvidia-*/cuda-* wheels and triton (several GB) even onto CPU-only machines; no
# reachable index offers a CPU-only x86_64 build, so the pin below does not avoid them. Pinned to the release this
# machine keeps on disk, installed first so the extras below reuse it.
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[dev,formats]"
# Best effort (never fails the setup): chromium, chromedriver and exiftool for the browser and XMP tests.
bash scripts/install_system_tools.sh
echo "phototag installed in .venv ($(.venv/bin/phototag --version))"

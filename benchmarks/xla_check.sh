#!/usr/bin/env bash
# The XLA check: its own environment (torch 2.9 + torch-xla 2.9; the main one pins torch 2.14.1), then
# one expert subject on the XLA device with PJRT_DEVICE=CPU. Usage: bash benchmarks/xla_check.sh [VENV_DIR]
# About 3 GB of downloads the first time (torch 2.9.0's CUDA build from PyPI, torch-xla 2.9.0).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-xla}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.9.0 torchvision==0.24.0 torch-xla==2.9.0
  "$VENV/bin/pip" install -q -e .
fi
PJRT_DEVICE=CPU SUTI_DEVICE=xla HF_HUB_OFFLINE=1 "$VENV/bin/python" -m benchmarks.xla_check "${@:2}"

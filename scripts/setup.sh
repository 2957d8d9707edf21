#!/usr/bin/env bash
# Installs everything lcsbench needs on a fresh Debian machine, from the project's own files:
# Blender (Debian package), a virtual environment in .venv, the CPU torch wheel, lcsbench and its
# extras. Idempotent: a second run only checks. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v blender >/dev/null 2>&1; then
    echo "[setup] installing Blender (Debian package 'blender')"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq blender >/dev/null
fi
blender --version 2>/dev/null | head -n 1

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    python3 -m venv .venv
fi
PY=.venv/bin/python
if ! $PY -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch==2.13.0 (the local CPU wheel; other specs pull CUDA packages)"
    $PY -m pip install -q --upgrade pip
    $PY -m pip install -q torch==2.13.0
fi
if ! $PY -c "import lcsbench, lightning, webdataset, diffusers, pytest" 2>/dev/null; then
    echo "[setup] installing lcsbench[dev,sdxl]"
    $PY -m pip install -q -e ".[dev,sdxl]"
fi
$PY -c "import torch, lightning; print(f'[setup] torch {torch.__version__}, lightning {lightning.__version__}')"

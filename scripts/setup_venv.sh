#!/usr/bin/env bash
# Create .venv from the lock file (once) and install dglkd into it in editable mode
# (pyproject.toml, PEP 660; no build isolation: the build uses the lock's setuptools).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || [ requirements.lock -nt .venv/.installed ]; then
    echo "setting up .venv from requirements.lock (torch 2.2.1 + dgl 2.1.0; a few minutes the first time)"
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --no-cache-dir --upgrade "pip<25"
    # --no-cache-dir: PyPI's torch 2.2.1 comes with about 3 GB of CUDA wheels (5.5 GB
    # installed), and pip's cache would keep a second copy of them on the disk.
    .venv/bin/python -m pip install --quiet --no-cache-dir -r requirements.lock
    touch .venv/.installed
fi
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .

#!/usr/bin/env bash
# The no-DGL tests (tests/test_without_dgl.py) where a user without DGL stands: a venv of
# its own with the newest torch this machine's index serves as a CPU build (2.13.0; DGL's
# wheels do not load with it) and dglkd installed from this checkout without its DGL
# dependencies, as a package (not editable). pytest runs from another folder with
# --import-mode=importlib, so the tests import the installed package, not the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
TORCH=${DGLKD_NODGL_TORCH:-2.13.0}
VENV=.venv-nodgl
if [ ! -x "$VENV/bin/python" ]; then
    echo "setting up $VENV: torch $TORCH (CPU), no DGL"
    "$PYTHON" -m venv "$VENV"
    # --no-index: the CPU wheel on this machine's disk (pip's find-links) or nothing; PyPI's
    # torch of that version is a CUDA build of several GB.
    if ! "$VENV/bin/python" -m pip install --quiet --no-index --no-deps "torch==$TORCH"; then
        rm -rf "$VENV"
        echo "test-nodgl: SKIPPED: no CPU wheel of torch $TORCH in pip's find-links on this" \
             "machine; set DGLKD_NODGL_TORCH to a version that has one"
        exit 0
    fi
    "$VENV/bin/python" -m pip install --quiet "torch==$TORCH" setuptools numpy pydantic pyyaml tqdm \
        scikit-learn pytest
fi
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation --force-reinstall .
"$VENV/bin/python" -c "import torch; print('test-nodgl: torch', torch.__version__)"
cd "$(mktemp -d)"
"$REPO/$VENV/bin/python" -m pytest -q --import-mode=importlib -p no:cacheprovider \
    --rootdir "$REPO" "$REPO/tests/test_without_dgl.py"

"""Every benchmark script still imports on this tree.

Benchmarks run for minutes to hours and never in CI, so an import they lost in a refactor
(a helper moved to another module) would otherwise surface only when someone needs the
numbers. Each script's module body runs (its imports and definitions), not its main.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py"))
LOAD = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='loaded_by_the_test')"


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_benchmark_imports(script, tmp_path):
    # As when run as a script: its own folder first on the path (the shared timing.py).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), str(REPO)]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD, str(REPO / "benchmarks" / script)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

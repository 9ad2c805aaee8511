"""The install a user makes: the wheel built from this tree, installed into a fresh
virtual environment, used from a folder outside the repository (no editable install, no
``PYTHONPATH``, no repository on the import path)."""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

# What the wheel is built from: the package's description and the package itself.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "dglkd")


def run(argv: list[object], cwd: Path, env: dict[str, str] | None = None,
        timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def user_env(home: Path) -> dict[str, str]:
    """A user's shell: no PYTHONPATH (the suite's own may point at the repository), a home
    of its own (dglkd's and DGL's caches start empty)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HOME=str(home), DGLBACKEND="pytorch", OUTDATED_IGNORE="1", OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of this tree (an in-tree build would leave ``build/`` and
    ``*.egg-info`` in the checkout); no index, no build isolation: the locked setuptools."""
    work = tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        source = REPO / name
        if not source.exists():
            continue  # (a tree from before pyproject.toml: built from setup.py alone)
        if source.is_dir():
            shutil.copytree(source, work / "src" / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (work / "src").mkdir(exist_ok=True)
            shutil.copy2(source, work / "src" / name)
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "--no-index", "-w", work / "dist", work / "src"], cwd=work)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "DEPRECATION" not in built.stdout + built.stderr, built.stdout + built.stderr
    (found,) = (work / "dist").glob("dglkd-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed, reusing this interpreter's
    locked packages: ``--system-site-packages`` alone would not do, since the system site of
    a virtual environment's python is the base interpreter's, so a ``.pth`` file lists this
    environment's site folders instead (read after the venv's own: the wheel comes first)."""
    root = tmp_path_factory.mktemp("venv") / "env"
    made = run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
    assert made.returncode == 0, made.stderr
    python = root / "bin" / "python"
    own_site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=root).stdout.strip()
    Path(own_site, "_locked_stack.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel],
                    cwd=root, env=user_env(root))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "DEPRECATION" not in installed.stdout + installed.stderr, installed.stderr
    return root


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """Where the user works: outside the repository, with a copy of a shipped config."""
    folder = tmp_path_factory.mktemp("user")
    shutil.copy2(REPO / "configs" / "cora_gcn_glnn.yaml", folder)
    return folder


def source_files() -> set[str]:
    """Every module and bundled data file of the source tree, as wheel paths."""
    files = {p for p in (REPO / "dglkd").rglob("*.py") if "__pycache__" not in p.parts}
    files |= {p for p in (REPO / "dglkd" / "data" / "bundled").rglob("*") if p.is_file()}
    return {p.relative_to(REPO).as_posix() for p in files}


def test_the_wheel_holds_every_module_and_the_bundled_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert sorted(source_files() - names) == []
    assert "dglkd/engine/run.py" in names and "dglkd/data/bundled/npz/cora.npz" in names
    # nothing but the package and its metadata (no tests/, benchmarks/ as packages)
    assert {n.split("/")[0] for n in names} == {"dglkd", wheel.name.split("-py3")[0] + ".dist-info"}
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "dglkd = dglkd.cli:main" in entry_points


def test_the_console_script_distills_bundled_cora_from_outside_the_repository(venv, user_folder):
    where = run([venv / "bin" / "python", "-c", "import dglkd; print(dglkd.__file__)"],
                cwd=user_folder, env=user_env(user_folder))
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel's copy
    done = run([venv / "bin" / "dglkd", "distill", "cora_gcn_glnn.yaml", "--out", "runs",
                "--set", "n_runs=1", "--set", "teacher_train.epochs=5",
                "--set", "train.epochs=5", "--set", "log.progress=false"],
               cwd=user_folder, env=user_env(user_folder))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (results,) = (user_folder / "runs").glob("*/results.json")
    scores = json.loads(results.read_text())
    for role in ("teacher", "baseline", "student"):
        assert 0.0 < scores[role]["test_acc"] <= 1.0, (role, scores[role])


def test_import_dglkd_is_enough_to_load_a_dataset(venv, user_folder):
    loaded = run([venv / "bin" / "python", "-c",
                  "import dglkd; task = dglkd.data.load('cora'); print(task.graph.num_nodes())"],
                 cwd=user_folder, env=user_env(user_folder))
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split()[-1] == "2708"

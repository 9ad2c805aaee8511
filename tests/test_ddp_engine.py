"""``dglkd distill CONFIG --nproc 2``: the engine's mini-batch phases under DDP on two CPU
processes (gloo), ending in the single-process accuracy band with no process left."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]


def _config(planetoid_root: str, cache: Path) -> dict:
    return {
        "name": "cora_ddp", "cache_dir": str(cache), "seed": 0, "n_runs": 1,
        "data": {"name": "cora", "root": planetoid_root},
        "teacher": {"model": "sage", "hidden": 64, "layers": 2, "dropout": 0.5},
        "teacher_train": {"epochs": 30, "lr": 0.01, "batch_size": 64, "fanouts": [-1, -1]},
        "student": {"model": "mlp", "hidden": 256, "layers": 2, "dropout": 0.6},
        "train": {"epochs": 60, "lr": 0.01, "batch_size": 512},
        "method": {"name": "glnn"}, "baseline": False,
        "log": {"progress": False, "tensorboard": False},
    }


def _distill(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dglkd", "distill", str(config), "--out",
                           str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=900)


def _student(out: Path) -> dict:
    (results,) = out.glob("*/results.json")
    return json.loads(results.read_text())


def test_two_processes_end_in_the_one_process_band_and_leave_nothing(planetoid_root,
                                                                      tmp_path):
    config = tmp_path / "cora_ddp.yaml"
    config.write_text(yaml.safe_dump(_config(planetoid_root, tmp_path / "cache2")))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    two = _distill(config, tmp_path / "two", "--nproc", "2")
    assert two.returncode == 0, two.stderr
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    assert two.stdout.count("run folder:") == 1  # rank 0 speaks for both

    config.write_text(yaml.safe_dump(_config(planetoid_root, tmp_path / "cache1")))
    one = _distill(config, tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two, one = _student(tmp_path / "two"), _student(tmp_path / "one")
    for run in (one, two):
        assert run["teacher"]["test_acc"] >= 0.76 and run["student"]["test_acc"] >= 0.74
    assert abs(two["student"]["test_acc"] - one["student"]["test_acc"]) < 0.03


def test_nproc_needs_mini_batch_phases(small_cora, write_config, cli, tmp_path):
    code, _, err = cli("distill", write_config(small_cora), "--nproc", "2", "--out", tmp_path)
    assert code == 2 and "--nproc 2: several processes split the seed nodes" in err

"""Every combination a config allows on Cora either runs or is refused in one line at once.

Teachers {gcn, sage, gat} trained full-batch or on sampled mini-batches × students {mlp,
gcn} trained full-batch or on mini-batches (node batches for the MLP, sampled blocks for
the GCN) × methods {kd, glnn, lsp, fitnet, hkd on a kNN graph, hkd on the native graph}:
one ``compare`` run per teacher/student setting with every method that can run (a short
schedule: it shows they run and end in finite numbers, not how well), and one ``distill``
run per combination that cannot, which must end in one ``dglkd: error:`` line within
seconds, before anything trains.
"""
from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

TEACHERS = ("gcn", "sage", "gat")
STUDENTS = ("mlp", "gcn")
MODES = ("full", "mini")
METHODS = {
    "kd": {"name": "kd"},
    "glnn": {"name": "glnn"},
    "lsp": {"terms": {"ce": 1.0, "lsp": {"weight": 1.0, "graph": "native"}}},
    "fitnet": {"name": "fitnet"},
    "hkd_knn": {"terms": {"ce": 1.0, "hkd": {"weight": 0.1, "relation": "knn"}}},
    "hkd_native": {"terms": {"ce": 1.0, "hkd": {"weight": 0.1, "relation": "native"}}},
}
# The graph among a batch's nodes is what native relations read: a graph-free student's
# node batches carry none (it could train full-batch, or use a kNN relation instead).
REFUSED = {("mlp", "mini", "lsp"), ("mlp", "mini", "hkd_native")}
# CPU seconds from the command to its error (see tests/test_startup_check.py).
REFUSAL_BOUND_S = 5.0


def _train(mode: str, model: str, epochs: int) -> dict:
    section = {"epochs": epochs, "lr": 0.01, "eval_batch_size": 4096, "checkpoint_every": 50}
    if mode == "mini":
        section["batch_size"] = 512
        if model != "mlp":
            section["fanouts"] = [5, 5]
    return section


def _config(planetoid_root: str, cache: Path, teacher: str, teacher_mode: str, student: str,
            student_mode: str) -> dict:
    return {
        "name": f"{teacher}-{teacher_mode}_{student}-{student_mode}", "cache_dir": str(cache),
        "seed": 0, "n_runs": 1, "baseline": False,
        "data": {"name": "cora", "root": planetoid_root},
        "teacher": {"model": teacher, "hidden": 8, "layers": 2},
        "teacher_train": _train(teacher_mode, teacher, 2),
        "student": {"model": student, "hidden": 16, "layers": 2},
        "train": _train(student_mode, student, 1),
        "method": {"name": "kd"},
        "compare": METHODS,
        "log": {"progress": False, "tensorboard": False},
    }


SETTINGS = list(itertools.product(TEACHERS, MODES, STUDENTS, MODES))


@pytest.fixture(scope="module")
def matrix_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("matrix_cache")


@pytest.mark.parametrize("teacher,teacher_mode,student,student_mode", SETTINGS,
                         ids=["-".join(s) for s in SETTINGS])
def test_every_combination_runs_or_is_refused_at_once(planetoid_root, matrix_cache, tmp_path,
                                                      write_config, teacher, teacher_mode,
                                                      student, student_mode):
    raw = _config(planetoid_root, matrix_cache, teacher, teacher_mode, student, student_mode)
    runnable = [m for m in METHODS if (student, student_mode, m) not in REFUSED]
    code, _, err = run_cli("compare", write_config(raw), "--methods", ",".join(runnable),
                           "--out", tmp_path / "runs")
    assert code == 0, err
    (comparison,) = (tmp_path / "runs").glob("*/comparison.json")
    rows = json.loads(comparison.read_text())["methods"]
    for method in runnable:
        assert math.isfinite(rows[method]["test_acc"]), (method, rows[method])

    for method in (m for m in METHODS if m not in runnable):
        raw["method"] = METHODS[method]
        cache_entries = sorted(matrix_cache.iterdir())
        start = time.process_time()
        code, _, err = run_cli("distill", write_config(raw, f"{method}.yaml"),
                               "--out", tmp_path / "refused")
        elapsed = time.process_time() - start
        assert code == 2 and err.count("\n") == 1 and err.startswith("dglkd: error: "), err
        assert "node batches" in err and "carry none" in err, err
        assert elapsed < REFUSAL_BOUND_S, (method, elapsed)
        assert sorted(matrix_cache.iterdir()) == cache_entries  # nothing was trained
        assert not any((tmp_path / "refused").glob("*/phases/*"))

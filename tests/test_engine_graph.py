"""The graph engine end to end on real Cora: results, cache, TensorBoard, resume, evaluate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dgl
import pytest
import yaml

from tests.conftest import REPO, learned, run_cli, small_cora_config


def _run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name != "cache")


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, planetoid_root):
    """One small GCN → MLP (GLNN) distillation run on Cora, with a teacher cache of its own."""
    folder = tmp_path_factory.mktemp("distilled")
    config = small_cora_config(planetoid_root, str(folder / "cache"))
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, stdout, err = run_cli("distill", path, "--out", folder / "runs")
    assert code == 0, err
    return folder / "runs", _run_dirs(folder / "runs")[0], stdout, config


def test_distill_writes_results_with_accuracy_margins(distilled):
    _, run_dir, stdout, _ = distilled
    results = _results(run_dir)
    for role in ("teacher", "student", "baseline"):
        for key in ("test_acc", "test_acc_std", "val_acc", "params", "test_acc_last"):
            assert key in results[role], (role, key)
    # Real Cora, public split: a GCN teacher is near 0.80, an MLP alone near 0.58.
    assert results["teacher"]["test_acc"] >= 0.76
    assert results["baseline"]["test_acc"] <= 0.66
    assert results["student"]["test_acc"] >= results["baseline"]["test_acc"] + 0.08
    inference = results["inference"]
    assert inference["targets"] == 1024
    assert inference["speedup"] == pytest.approx(inference["teacher_ms"] / inference["student_ms"])
    assert "distilled student" in (run_dir / "results.md").read_text()
    assert "distilled student" in stdout
    # GLNN with λ = 0: its CE term has weight 0, its KL term is logged under its label.
    assert results["method"] == "glnn" and results["formula"] == "loss = 1*glnn.kd"
    assert (run_dir / "config.yaml").is_file()
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["versions"]["dgl"] == dgl.__version__ and env["seeds"] == [0]


def test_second_distill_uses_the_teacher_cache(distilled, cli, write_config):
    out, first_dir, first_stdout, small_cora = distilled
    assert "teacher seed 0: training gcn" in first_stdout
    code, stdout, err = cli("distill", write_config(small_cora), "--out", out)
    assert code == 0, err
    assert "teacher seed 0: loaded from cache" in stdout and "(no training)" in stdout
    second_dir = [d for d in _run_dirs(out) if d != first_dir]
    assert len(second_dir) == 1, "a second run must get its own folder"
    assert not (second_dir[0] / "phases" / "teacher_seed0.json").exists()
    assert _results(second_dir[0])["teacher"] == _results(first_dir)["teacher"] | {
        "runs": _results(first_dir)["teacher"]["runs"]}
    # A different teacher config is a different key: trained again.
    code, stdout, _ = cli("distill", write_config(small_cora), "--out", out,
                          "--set", "teacher.hidden=16", "--set", "baseline=false")
    assert "teacher seed 0: training gcn" in stdout


def test_corrupt_cache_entry_is_not_used(distilled, cli, write_config):
    out, _, _, small_cora = distilled
    entries = list(Path(small_cora["cache_dir"]).glob("teacher-*.pt"))
    assert entries
    for entry in entries:
        entry.write_bytes(b"not a torch file")
    code, stdout, _ = cli("distill", write_config(small_cora), "--out", out,
                          "--set", "baseline=false")
    assert code == 0 and "teacher seed 0: training gcn" in stdout


def test_tensorboard_has_losses_accuracy_lr_and_hparams(distilled):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _, _ = distilled
    events = EventAccumulator(str(run_dir / "tb" / "student_seed0"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/glnn.kd", "acc/train", "acc/val", "acc/test", "lr"} <= scalars
    assert len(events.Scalars("loss/glnn.kd")) == 80
    kd = [e.value for e in events.Scalars("loss/glnn.kd")]
    assert kd[-1] < 0.5 * kd[0]
    # The phase's hparams live in its own run (tests/test_tracking.py: one run per phase).
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins
    assert "hparam/test_acc" in scalars
    teacher = EventAccumulator(str(run_dir / "tb" / "teacher_seed0"))
    teacher.Reload()
    assert "loss/ce" in teacher.Tags()["scalars"]


def test_evaluate_reproduces_the_best_val_scores(distilled, cli):
    _, run_dir, _, _ = distilled
    code, stdout, err = cli("evaluate", run_dir)
    assert code == 0, err
    scores = json.loads((run_dir / "evaluation.json").read_text())
    results = _results(run_dir)
    for role in ("teacher", "baseline", "student"):
        assert scores[f"{role}_seed0"]["test_acc"] == pytest.approx(
            results[role]["runs"][0]["test_acc"])
    assert "student_seed0" in stdout


def _distill_subprocess(config: Path, out: Path, *extra: str, kill: str | None = None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launcher = ["-m", "dglkd"] if kill is None else [str(REPO / "tests" / "kill_after.py"), kill]
    return subprocess.run([sys.executable, *launcher, "distill", *map(str, extra)]
                          + ([str(config)] if config else []) + ["--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)


def test_resume_after_kill_ends_like_an_uninterrupted_run(write_config, small_cora, tmp_path):
    small_cora["cache_dir"] = str(tmp_path / "cache")
    config = write_config(small_cora)
    killed = _distill_subprocess(config, tmp_path / "killed", kill="student_seed0:39")
    assert killed.returncode == -9, killed.stderr
    run_dir = _run_dirs(tmp_path / "killed")[0]
    assert (run_dir / "checkpoints" / "student_seed0.pt").exists()
    assert not (run_dir / "results.json").exists()
    resumed = _distill_subprocess(None, tmp_path / "unused", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "teacher seed 0: loaded from cache" in resumed.stdout
    straight = _distill_subprocess(config, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    a, b = _results(run_dir), _results(_run_dirs(tmp_path / "straight")[0])
    for role in ("teacher", "baseline", "student"):
        assert learned(a[role]["runs"]) == learned(b[role]["runs"]), role
    history = json.loads((run_dir / "phases" / "student_seed0.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(80))


def test_a_kill_inside_a_manifest_write_resumes_like_an_uninterrupted_run(
        write_config, small_cora, tmp_path):
    small_cora["cache_dir"] = str(tmp_path / "cache")
    config = write_config(small_cora)
    killed = _distill_subprocess(config, tmp_path / "killed", kill="write:manifest.json:12")
    assert killed.returncode == -9, killed.stderr
    run_dir = _run_dirs(tmp_path / "killed")[0]
    assert list(run_dir.rglob(".*.tmp")), "the kill should leave the manifest's temp file"
    resumed = _distill_subprocess(None, tmp_path / "unused", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    straight = _distill_subprocess(config, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    a, b = _results(run_dir), _results(_run_dirs(tmp_path / "straight")[0])
    for role in ("teacher", "baseline", "student"):
        assert learned(a[role]["runs"]) == learned(b[role]["runs"]), role
    assert not list(run_dir.rglob(".*.tmp"))


def test_a_kill_inside_the_config_write_asks_for_a_new_start(write_config, small_cora,
                                                              tmp_path):
    config = write_config(small_cora)
    killed = _distill_subprocess(config, tmp_path / "killed", kill="write:config.yaml:1")
    assert killed.returncode == -9, killed.stderr
    run_dir = _run_dirs(tmp_path / "killed")[0]
    resumed = _distill_subprocess(None, tmp_path / "unused", "--resume", run_dir)
    lines = resumed.stderr.strip().splitlines()
    assert resumed.returncode == 2 and len(lines) == 1, resumed.stderr
    assert "stopped before its config.yaml was saved" in lines[0] and "start it again" in lines[0]
    assert not list(run_dir.rglob(".*.tmp"))


def test_user_graph_file(cli, write_config, small_cora, tmp_path):
    from dglkd.data.planetoid import load_planetoid

    graph = load_planetoid("cora", small_cora["data"]["root"]).graph
    path = tmp_path / "mine.bin"
    dgl.save_graphs(str(path), [graph])
    small_cora["data"] = {"name": "graph_file", "path": str(path)}
    small_cora["baseline"] = False
    code, _, err = cli("distill", write_config(small_cora), "--out", tmp_path / "runs")
    assert code == 0, err
    results = _results(_run_dirs(tmp_path / "runs")[0])
    assert "baseline" not in results and results["student"]["test_acc"] >= 0.7


def test_gnn_to_gnn_kd_into_a_small_gcn(cli, write_config, small_cora, tmp_path):
    small_cora["student"] = {"model": "gcn", "hidden": 8, "layers": 2, "dropout": 0.5}
    small_cora["method"] = {"name": "kd", "temperature": 2.0}  # KD's paper recipe: ce + kd
    code, _, err = cli("distill", write_config(small_cora), "--out", tmp_path / "runs")
    assert code == 0, err
    results = _results(_run_dirs(tmp_path / "runs")[0])
    assert results["method"] == "ce+kd" and results["formula"] == "loss = 1*ce + 1*kd"
    assert results["student"]["params"] * 3 < results["teacher"]["params"]
    assert results["student"]["test_acc"] >= 0.72


def test_inductive_split_trains_on_observed_nodes(cli, write_config, small_cora, tmp_path):
    npz = REPO / "dglkd" / "data" / "bundled" / "npz" / "cora.npz"
    small_cora["data"] = {"name": "npz", "path": str(npz), "inductive": True}
    code, stdout, err = cli("distill", write_config(small_cora), "--out", tmp_path / "runs")
    assert code == 0, err
    results = _results(_run_dirs(tmp_path / "runs")[0])
    assert results["student"]["test_acc"] >= results["baseline"]["test_acc"] + 0.05


def test_example_distills_gcn_on_an_ogb_layout_dataset(tmp_path):
    sys.path.insert(0, str(REPO / "examples"))
    import distill_gcn_ogb

    from tests.ogb_layout import write_tiny_ogb

    write_tiny_ogb(str(tmp_path / "ogbn_arxiv"), num_nodes=300, num_classes=5, split="time")
    scores = distill_gcn_ogb.main(["--root", str(tmp_path), "--epochs", "40"])
    assert scores["teacher"] >= 0.9 and scores["student"] >= 0.9


def test_train_teacher_then_distill_loads_it(cli, write_config, small_cora, tmp_path):
    small_cora["cache_dir"] = str(tmp_path / "cache")
    small_cora["teacher_train"]["epochs"] = 20
    config = write_config(small_cora)
    code, stdout, err = cli("train-teacher", config, "--out", tmp_path / "runs")
    assert code == 0, err
    results = _results(_run_dirs(tmp_path / "runs")[0])
    assert "teacher" in results and "student" not in results
    code, stdout, err = cli("distill", config, "--out", tmp_path / "runs",
                            "--set", "baseline=false", "--set", "train.epochs=5")
    assert code == 0, err
    assert "teacher seed 0: loaded from cache" in stdout


def test_compare_writes_a_table_and_a_bar_chart(cli, write_config, small_cora, tmp_path):
    small_cora["compare"] = {"kd_t2": {"name": "kd", "temperature": 2.0}}
    code, stdout, err = cli("compare", write_config(small_cora), "--out", tmp_path / "runs",
                            "--methods", "ce,glnn,kd_t2")
    assert code == 0, err
    run_dir = _run_dirs(tmp_path / "runs")[0]
    comparison = json.loads((run_dir / "comparison.json").read_text())
    assert list(comparison["methods"]) == ["teacher", "ce", "glnn", "kd_t2"]
    assert comparison["methods"]["glnn"]["test_acc"] > comparison["methods"]["ce"]["test_acc"]
    assert comparison["methods"]["kd_t2"]["formula"] == "loss = 1*ce + 1*kd"
    assert comparison["methods"]["kd_t2"]["constants"]["kd"]["temperature"] == 2.0
    table = (run_dir / "comparison.md").read_text()
    assert "| kd_t2 | mlp |" in table and "test acc (last epoch)" in table
    assert (run_dir / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_rejects_unknown_methods_before_running(cli, write_config, small_cora, tmp_path):
    code, _, err = cli("compare", write_config(small_cora), "--out", tmp_path / "runs",
                       "--methods", "ce,nope")
    assert code == 2 and "--methods: unknown 'nope'" in err
    assert not (tmp_path / "runs").exists()


def test_patience_ends_a_phase_after_that_many_epochs_without_a_better_val_score(
        cli, write_config, small_cora, tmp_path):
    small_cora["train"].update({"epochs": 300, "patience": 10})
    small_cora["baseline"] = False
    code, stdout, err = cli("distill", write_config(small_cora), "--out", tmp_path / "runs")
    assert code == 0, err
    run_dir = _run_dirs(tmp_path / "runs")[0]
    phase = json.loads((run_dir / "phases" / "student_seed0.json").read_text())
    history, best = phase["history"], phase["best_epoch"]
    assert len(history) == best + 10 + 1 < 300  # stopped right after its patience ran out
    assert max(h["val_acc"] for h in history[best + 1:]) <= history[best]["val_acc"]
    assert phase["best"]["test_acc"] == history[best]["test_acc"]
    assert f"student_seed0: stopped after epoch {best + 10}" in stdout
    results = _results(run_dir)
    assert results["student"]["runs"][0]["epochs_run"] == len(history)
    # What each phase cost is in the results too.
    for role in ("teacher", "student"):
        assert results[role]["wall_s"] > 0 and results[role]["peak_rss_gb"] > 0.1, role
    assert "Per phase (mean wall time, peak resident memory): teacher" in stdout


def test_a_resumed_phase_keeps_counting_its_patience(write_config, small_cora, tmp_path):
    small_cora["cache_dir"] = str(tmp_path / "cache")
    small_cora["train"].update({"epochs": 300, "patience": 25, "checkpoint_every": 5})
    config = write_config(small_cora)
    killed = _distill_subprocess(config, tmp_path / "killed", kill="student_seed0:14")
    assert killed.returncode == -9, killed.stderr
    run_dir = _run_dirs(tmp_path / "killed")[0]
    resumed = _distill_subprocess(None, tmp_path / "unused", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    straight = _distill_subprocess(config, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    a, b = (json.loads((d / "phases" / "student_seed0.json").read_text())
            for d in (run_dir, _run_dirs(tmp_path / "straight")[0]))
    assert a["history"] == b["history"] and len(a["history"]) < 300
    assert a["best_epoch"] == b["best_epoch"]


def test_cpu_training_phases_treat_subnormal_floats_as_zero_and_restore_the_mode(
        cli, write_config, small_cora, tmp_path, monkeypatch):
    """A student matching a confident teacher fills its gradients with subnormal floats,
    which slow a CPU's matrix kernels by orders of magnitude (the products-shaped GLNN
    student: 80 s an epoch, then 564 s), so every training phase of a CPU run flushes them
    to zero; the mode is the process's, so the run leaves it as it found it (hypothesis,
    run after it in the same process, needs subnormals)."""
    import dglkd.engine.run as run_module
    from dglkd.engine.env import flushing_subnormals

    during = []
    fit = run_module.fit

    def recording_fit(*args, **kwargs):
        during.append(flushing_subnormals())
        return fit(*args, **kwargs)

    monkeypatch.setattr(run_module, "fit", recording_fit)
    assert not flushing_subnormals()
    code, _, err = cli("distill", write_config(small_cora), "--out", tmp_path / "runs")
    assert code == 0, err
    assert during and all(during)
    assert not flushing_subnormals()

"""Issue 11, no silent wrong result: a damaged cache entry, run folder file, checkpoint or
config, a diverging loss and a bad user graph each end in one line (or an honest retrain
from a fresh initialisation), never in numbers that look right."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dgl
import pytest
import torch
import yaml

from dglkd.engine.cache import TeacherCache
from dglkd.engine.loop import CHECKPOINT_HOOKS
from dglkd.errors import DglkdError
from tests.conftest import learned, run_cli, small_cora_config

TEACHER_EPOCHS = 20


def _one_line_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("dglkd: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _config(folder: Path, planetoid_root: str, **changes) -> Path:
    """A teacher-only Cora recipe (train-teacher) with its own cache folder."""
    raw = small_cora_config(planetoid_root, str(folder / "cache"))
    raw["teacher_train"] = {"epochs": TEACHER_EPOCHS, "lr": 0.01, "checkpoint_every": 5}
    raw["log"] = {"progress": False, "tensorboard": False}
    for key, value in changes.items():
        raw[key] = value
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def _train_teacher(config: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return run_cli("train-teacher", config, "--out", out, *extra)


def _run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and p.name != "cache"]
    return run_dir


def _teacher_runs(run_dir: Path) -> list[dict]:
    return learned(json.loads((run_dir / "results.json").read_text())["teacher"]["runs"])


def _scaled(state: dict, factor: float) -> dict:
    """Weights that still load, yet are not the trained ones."""
    return {k: v * factor if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, planetoid_root):
    """One uninterrupted teacher run: what every recovered run must reproduce."""
    folder = tmp_path_factory.mktemp("straight")
    config = _config(folder, planetoid_root)
    code, stdout, err = _train_teacher(config, folder / "runs")
    assert code == 0, err
    return folder, _run_dir(folder / "runs")


# -- 1, 2: the teacher cache -------------------------------------------------------------
def _cache_entry(folder: Path) -> tuple[Path, dict]:
    (path,) = (folder / "cache").glob("teacher-*.pt")
    return path, torch.load(path, weights_only=True)


def _copy_of_the_cache(straight, tmp_path: Path) -> tuple[Path, dict]:
    shutil.copytree(straight[0] / "cache", tmp_path / "cache")
    return _cache_entry(tmp_path)


def _retrain_like_straight(straight, tmp_path: Path, planetoid_root: str) -> str:
    """Train the teacher on the (altered) copied cache; it must end as the straight run."""
    code, stdout, err = _train_teacher(_config(tmp_path, planetoid_root), tmp_path / "runs")
    assert code == 0, err
    assert _teacher_runs(_run_dir(tmp_path / "runs")) == _teacher_runs(straight[1])
    return stdout


def test_a_cache_entry_that_does_not_reproduce_is_retrained_from_a_fresh_init(
        straight, tmp_path, planetoid_root):
    _, entry = _copy_of_the_cache(straight, tmp_path)
    # A well-recorded entry whose logits no longer match its weights (other hardware,
    # another torch): its weights must not seed the retraining.
    TeacherCache(tmp_path / "cache").save(entry["key"], _scaled(entry["state"], 50.0),
                                          torch.zeros_like(entry["logits"]), entry["result"])
    stdout = _retrain_like_straight(straight, tmp_path, planetoid_root)
    assert "does not reproduce its outputs; retraining from a fresh initialisation" in stdout


def test_edited_cache_results_are_refused_and_the_teacher_retrained(
        straight, tmp_path, planetoid_root):
    path, entry = _copy_of_the_cache(straight, tmp_path)
    entry["result"] = {**entry["result"], "test_acc": 0.9999}  # weights and logits intact
    torch.save(entry, path)
    stdout = _retrain_like_straight(straight, tmp_path, planetoid_root)
    assert f"teacher cache: {path}:" in stdout and "entry discarded" in stdout
    assert "teacher seed 0: training gcn" in stdout
    # The retrained entry replaced the edited one, with its record.
    assert TeacherCache(tmp_path / "cache").load(entry["key"])["result"]["test_acc"] != 0.9999


# -- 3: a run folder never poisons the cache ---------------------------------------------
def test_a_damaged_run_folder_teacher_is_retrained_not_cached(straight, tmp_path,
                                                                  planetoid_root):
    folder, straight_dir = straight
    config = _config(tmp_path, planetoid_root)
    code, _, err = _train_teacher(config, tmp_path / "runs")
    assert code == 0, err
    run_dir = _run_dir(tmp_path / "runs")
    model_file = run_dir / "models" / "teacher_seed0.pt"
    good = torch.load(model_file, weights_only=True)
    torch.save({k: _scaled(v, 50.0) for k, v in good.items()}, model_file)
    shutil.rmtree(tmp_path / "cache")
    code, stdout, err = run_cli("train-teacher", "--resume", run_dir)
    assert code == 0, err
    assert f"teacher_seed0: {model_file}:" in stdout and "trained again" in stdout
    _, entry = _cache_entry(tmp_path)
    for name, value in good["model"].items():
        assert torch.equal(entry["state"][name], value), name
    assert _teacher_runs(run_dir) == _teacher_runs(straight_dir)


# -- 4: checkpoints ----------------------------------------------------------------------
def _interrupt_at(target: str):
    def hook(phase: str, epoch: int) -> None:
        if f"{phase}:{epoch}" == target:
            raise KeyboardInterrupt  # the CLI ends the way a user's Ctrl-C does
    return hook


def test_a_damaged_checkpoint_is_discarded_and_the_phase_restarts(straight, tmp_path,
                                                                   planetoid_root):
    _, straight_dir = straight
    config = _config(tmp_path, planetoid_root)
    hook = _interrupt_at("teacher_seed0:9")
    CHECKPOINT_HOOKS.append(hook)
    try:
        code, _, _ = _train_teacher(config, tmp_path / "runs")
    finally:
        CHECKPOINT_HOOKS.remove(hook)
    assert code == 130
    run_dir = _run_dir(tmp_path / "runs")
    ckpt = run_dir / "checkpoints" / "teacher_seed0.pt"
    state = torch.load(ckpt, weights_only=True)
    state["modules"]["model"] = _scaled(state["modules"]["model"], 50.0)
    torch.save(state, ckpt)
    code, stdout, err = run_cli("train-teacher", "--resume", run_dir)
    assert code == 0, err
    assert f"teacher_seed0: {ckpt}:" in stdout and "fresh initialisation" in stdout
    assert _teacher_runs(run_dir) == _teacher_runs(straight_dir)
    history = json.loads((run_dir / "phases" / "teacher_seed0.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(TEACHER_EPOCHS))


# -- 5: configs ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "null\n", "# only a comment\n", "{}\n"])
def test_an_empty_config_file_is_an_error(tmp_path, text):
    config = tmp_path / "empty.yaml"
    config.write_text(text)
    code, _, err = _train_teacher(config, tmp_path / "runs")
    _one_line_error(code, err, "empty.yaml", "empty")
    assert not (tmp_path / "runs").exists()


def test_a_non_mapping_config_file_is_an_error(tmp_path):
    config = tmp_path / "list.yaml"
    config.write_text("- name: cora\n")
    code, _, err = _train_teacher(config, tmp_path / "runs")
    _one_line_error(code, err, "list.yaml", "mapping", "list")


@pytest.mark.parametrize("text", ["", "n_runs: 2\n"])
def test_a_run_folders_config_is_verified_before_resuming(straight, tmp_path, text):
    _, straight_dir = straight
    run_dir = shutil.copytree(straight_dir, tmp_path / "run")
    (run_dir / "config.yaml").write_text(text)
    code, _, err = run_cli("train-teacher", "--resume", run_dir)
    _one_line_error(code, err, str(run_dir / "config.yaml"), "start a new run")


def test_a_run_folder_without_a_manifest_is_not_resumed(straight, tmp_path):
    _, straight_dir = straight
    run_dir = shutil.copytree(straight_dir, tmp_path / "run")
    (run_dir / "manifest.json").unlink()
    code, _, err = run_cli("train-teacher", "--resume", run_dir)
    _one_line_error(code, err, "manifest.json", "missing")


# -- 6: non-finite training ------------------------------------------------------------
def test_a_diverging_learning_rate_stops_the_phase_with_one_line(tmp_path, planetoid_root):
    config = _config(tmp_path, planetoid_root)
    code, _, err = _train_teacher(config, tmp_path / "runs", "--set", "teacher_train.lr=1e30")
    line = _one_line_error(code, err, "teacher_seed0", "loss term", "at epoch",
                           "teacher_train.lr=1e+30")
    assert "'ce'" in line
    # Diverged before its first checkpoint: nothing to resume, so no folder is left.
    assert not list((tmp_path / "runs").glob("*/results.json"))


def test_a_zero_temperature_is_refused_by_the_config(tmp_path, planetoid_root):
    config = _config(tmp_path, planetoid_root, method={"name": "glnn", "temperature": 0})
    code, _, err = run_cli("distill", config, "--out", tmp_path / "runs")
    _one_line_error(code, err, "method.temperature", "greater than or equal to 0.01")


def _tiny_graph(num_classes: int = 3) -> dgl.DGLGraph:
    graph = dgl.rand_graph(40, 160)
    graph.ndata["feat"] = torch.randn(40, 5)
    graph.ndata["label"] = torch.arange(40) % num_classes
    index = torch.arange(40)
    graph.ndata["train_mask"] = index < 20
    graph.ndata["val_mask"] = (index >= 20) & (index < 30)
    graph.ndata["test_mask"] = index >= 30
    return graph


def test_non_finite_user_features_are_a_load_time_error():
    from dglkd.data.user import from_dgl_graph

    graph = _tiny_graph()
    graph.ndata["feat"][[3, 7], 1] = float("nan")
    graph.ndata["feat"][9, 0] = float("inf")
    with pytest.raises(DglkdError, match=r"NaN or infinite values on 3 nodes \(first: node 3\)"):
        from_dgl_graph(graph, name="mine")


# -- 7: labels --------------------------------------------------------------------------
def test_labels_past_a_gap_in_the_class_ids_are_a_load_time_error():
    from dglkd.data.user import from_dgl_graph

    graph = _tiny_graph()
    graph.ndata["label"][35:40] = 99  # five test nodes
    with pytest.raises(DglkdError, match=r"of 5 train/val/test nodes lies outside \[0, 3\) "
                                         r"\(the contiguous class ids the labelled nodes use; found 99..99\)"):
        from_dgl_graph(graph, name="mine")
    with pytest.raises(DglkdError, match=r"of 5 .* outside \[0, 4\) \(num_classes=4"):
        from_dgl_graph(graph, name="mine", num_classes=4)
    assert from_dgl_graph(graph, name="mine", num_classes=100).num_classes == 100
    assert from_dgl_graph(_tiny_graph(), name="mine").num_classes == 3


def test_a_user_graph_file_with_a_stray_label_fails_before_training(tmp_path, planetoid_root):
    path = tmp_path / "mine.bin"
    graph = _tiny_graph()
    graph.ndata["label"][35:40] = 99
    dgl.save_graphs(str(path), [graph])
    config = _config(tmp_path, planetoid_root, data={"name": "graph_file", "path": str(path)})
    code, _, err = _train_teacher(config, tmp_path / "runs")
    _one_line_error(code, err, "5 train/val/test nodes", "[0, 3)")


# -- 8: evaluate ------------------------------------------------------------------------
def test_evaluate_refuses_a_damaged_model_file(straight, tmp_path):
    _, straight_dir = straight
    run_dir = shutil.copytree(straight_dir, tmp_path / "run")
    code, _, err = run_cli("evaluate", run_dir)
    assert code == 0, err
    model_file = run_dir / "models" / "teacher_seed0.pt"
    state = torch.load(model_file, weights_only=True)
    torch.save({k: _scaled(v, 50.0) for k, v in state.items()}, model_file)
    code, _, err = run_cli("evaluate", run_dir)
    _one_line_error(code, err, str(model_file), "not evaluated")


# -- the manifest, temp files, --out ---------------------------------------------------
def test_every_artifact_is_recorded_with_its_size_and_digest(straight):
    from dglkd.engine.io import file_digest

    _, run_dir = straight
    files = json.loads((run_dir / "manifest.json").read_text())["files"]
    for name in ("config.yaml", "environment.json", "models/teacher_seed0.pt",
                 "phases/teacher_seed0.json", "results.json", "results.md"):
        assert files[name] == file_digest(run_dir / name), name


def test_stray_temp_files_are_removed_at_the_next_start(straight, tmp_path):
    _, straight_dir = straight
    run_dir = shutil.copytree(straight_dir, tmp_path / "run")
    dead = [run_dir / "checkpoints" / ".teacher_seed0.pt.999999999.abc.tmp",
            run_dir / ".results.json.x1y2.tmp"]  # the second named by an older dglkd
    live = run_dir / f".results.md.{os.getpid()}.abc.tmp"
    for tmp in [*dead, live]:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"half")
    code, _, err = run_cli("train-teacher", "--resume", run_dir)
    assert code == 0, err
    assert not any(tmp.exists() for tmp in dead)
    assert live.exists()  # a write of a live process is left alone


def test_stray_temp_files_leave_the_cache_at_its_first_lookup(tmp_path):
    dead = tmp_path / ".teacher-0.pt.999999999.abc.tmp"
    dead.write_bytes(b"half")
    assert TeacherCache(tmp_path).load({"version": 1}) is None
    assert not dead.exists()


def test_an_empty_out_folder_is_an_error(straight, cli):
    folder, _ = straight
    code, _, err = cli("train-teacher", folder / "config.yaml", "--out", "")
    _one_line_error(code, err, "--out", "empty")

"""TensorBoard: one run per training phase, holding its curves and its hparams."""
from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.conftest import run_cli


def _runs(tb: Path) -> dict[str, EventAccumulator]:
    """Every TensorBoard run under ``tb``: each folder holding event files, loaded."""
    runs = {}
    for folder in sorted({p.parent for p in tb.rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(folder))
        events.Reload()
        runs[folder.relative_to(tb).as_posix()] = events
    return runs


def _hparams(events: EventAccumulator) -> dict[str, object]:
    """The hparams of a run's session-start summary."""
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
            for k, v in data.session_start_info.hparams.items()}


def test_each_phase_is_one_run_with_its_curves_and_hparams(small_cora, write_config, tmp_path):
    config = dict(small_cora, n_runs=1, log={"progress": False, "tensorboard": True},
                  teacher_train={"epochs": 3}, train={"epochs": 3})
    code, _, err = run_cli("distill", write_config(config), "--out", tmp_path / "runs")
    assert code == 0, err
    (tb,) = (tmp_path / "runs").glob("*/tb")
    runs = _runs(tb)
    assert sorted(runs) == ["baseline_seed0", "student_seed0", "teacher_seed0"]
    for name, events in runs.items():
        tags = events.Tags()
        assert {"acc/val", "acc/test", "lr", "hparam/best_val_acc", "hparam/test_acc"} \
            <= set(tags["scalars"]), (name, tags["scalars"])
        assert len(events.Scalars("acc/val")) == 3  # one point per epoch, no duplicates
        params = _hparams(events)
        assert params["phase"] == name, (name, params)
        assert params["model"] == ("gcn" if name.startswith("teacher") else "mlp")
        val = [point.value for point in events.Scalars("acc/val")]
        best = val.index(max(val))  # the first epoch at the best validation accuracy
        assert events.Scalars("hparam/test_acc")[0].value == \
            events.Scalars("acc/test")[best].value

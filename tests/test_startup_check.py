"""Everything that can be checked before training is checked at start, within seconds:
every phase of the run is built with untrained models and stepped once on a small batch of
its kind, so a recipe that cannot run is refused in one line before a teacher trains."""
from __future__ import annotations

import textwrap
import time

import pytest

# Seconds of this process's CPU time from the command to its error: what the wall clock
# reads on a quiet machine, but not stretched by other jobs on a busy one.
STARTUP_BOUND_S = 5.0


def _refused_at_once(cli, config, out) -> str:
    """The one error line of a run that must be refused before anything trains."""
    start = time.process_time()
    code, _, err = cli("distill", config, "--out", out)
    elapsed = time.process_time() - start
    assert code == 2 and err.count("\n") == 1 and err.startswith("dglkd: error: "), err
    assert elapsed < STARTUP_BOUND_S, elapsed
    assert not any(out.glob("*/phases/*")) and not any(out.glob("*/models/*"))
    return err


def test_a_feature_the_student_does_not_have_is_refused_before_the_teacher_trains(
        small_cora, write_config, cli, tmp_path):
    small_cora["method"] = {"terms": {"ce": 1.0, "hkd": {"weight": 0.1, "relation": "knn",
                                                        "student_feature": "pool"}}}
    err = _refused_at_once(cli, write_config(small_cora), tmp_path / "runs")
    assert "feature 'pool': no module at that path in MLP" in err and "hidden" in err


def test_hkd_with_its_default_features_runs_on_graph_models(small_cora, write_config, cli,
                                                            tmp_path):
    """The defaults name ``hidden``, the penultimate feature every model has (a GNN's or
    MLP's last hidden layer, a CNN's pooled feature)."""
    small_cora["method"] = {"terms": {"ce": 1.0, "hkd": {"weight": 0.1}}}
    small_cora["train"]["epochs"] = 2
    small_cora["baseline"] = False
    code, _, err = cli("distill", write_config(small_cora), "--out", tmp_path / "runs")
    assert code == 0, err


def test_a_user_method_whose_terms_miss_its_weights_is_refused_at_start(
        small_cora, write_config, cli, tmp_path, monkeypatch):
    (tmp_path / "mismatched_terms.py").write_text(textwrap.dedent('''
        import dglkd


        @dglkd.register_method("mismatched_terms")
        class Mismatched(dglkd.DistillMethod):
            """Test double: returns a term its term_weights() does not declare."""

            def loss_terms(self, batch):
                return {"undeclared": batch.student.logits.mean()}
    '''))
    monkeypatch.chdir(tmp_path)
    small_cora["imports"] = ["mismatched_terms"]
    small_cora["method"] = {"terms": {"ce": 1.0, "mismatched_terms": 1.0}}
    err = _refused_at_once(cli, write_config(small_cora), tmp_path / "runs")
    assert "no term 'undeclared'" in err and "its terms: mismatched_terms" in err


def test_a_native_relation_on_node_batches_is_refused_at_start(small_cora, write_config,
                                                               cli, tmp_path):
    """A native relation on a graph-free student's node batches: refused at start."""
    small_cora["train"]["batch_size"] = 256
    small_cora["method"] = {"terms": {"ce": 1.0, "lsp": {"weight": 1.0, "graph": "native"}}}
    err = _refused_at_once(cli, write_config(small_cora), tmp_path / "runs")
    assert "node batches" in err and "union_knn" in err

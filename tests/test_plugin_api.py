"""dglkd as a plugin, the way the README shows it: composed recipes, a user's own method in
its own module (through ``imports:`` in distill, compare and evaluate), the one-call
context, public data helpers, and the errors a user's first mistakes get."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import dglkd
from dglkd.errors import DglkdError

REPO = Path(__file__).resolve().parents[1]

USER_MODULE = '''
"""A user's own method, in the user's own module."""
import pydantic
import torch.nn.functional as F

import dglkd


class CosineParams(dglkd.MethodParams):
    scale: float = pydantic.Field(1.0, gt=0, description="multiplies 1 - cos")


@dglkd.register_method("cosine_kd")
class CosineKD(dglkd.DistillMethod):
    """1 - cos(student logits, teacher logits), averaged over the distilled rows."""

    Params = CosineParams

    def loss_terms(self, batch):
        s = batch.distill_rows(batch.student.logits)
        t = batch.distill_rows(batch.teacher.logits)
        return {"cosine_kd": self.params.scale * (1 - F.cosine_similarity(s, t)).mean()}
'''


# -- composition --------------------------------------------------------------------------
def test_compose_sums_each_methods_own_terms_against_a_hand_computation():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 4), torch.randn(6, 4)
    labels, mask = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([1, 1, 0, 0, 1, 0]).bool()
    recipe = dglkd.compose(ce=1.0, kd={"weight": 0.5, "temperature": 2.0})
    terms = recipe(student, teacher, labels=labels, label_mask=mask)
    ce = F.cross_entropy(student[mask], labels[mask])
    p_t = F.softmax(teacher / 2, -1)
    kd = (p_t * (p_t.log() - F.log_softmax(student / 2, -1))).sum(-1).mean() * 4
    assert set(terms) == {"ce", "kd"}
    assert terms["ce"] == pytest.approx(ce.item(), rel=1e-6)
    assert terms["kd"] == pytest.approx(0.5 * kd.item(), rel=1e-6)
    assert str(recipe) == "ce+kd: loss = 1*ce + 0.5*kd"


def test_no_method_repeats_ce_or_kd_inside_itself():
    for name in ("kd", "glnn", "fitnet", "rkd"):
        method = dglkd.build_method(name, dglkd.MethodContext(4, student_shapes={"hidden": (3,)},
                                                              teacher_shapes={"hidden": (3,)}))
        assert "ce" not in method.term_weights() or name == "glnn"  # GLNN's λ·CE is its own
    assert dglkd.build_method("kd", 4).term_weights() == {"kd": 1.0}


def test_a_method_named_alone_stands_for_its_paper_recipe():
    from dglkd.methods.recipe import recipe_spec

    spec = recipe_spec({"name": "kd", "temperature": 2.0})
    assert {k: (v.method, v.weight, v.params) for k, v in spec.items()} == {
        "ce": ("ce", 1.0, {}), "kd": ("kd", 1.0, {"temperature": 2.0})}


def test_raw_logits_tensors_are_accepted_and_other_types_named():
    method = dglkd.build_method("kd", 3, temperature=4)
    assert set(method(torch.randn(2, 3), torch.randn(2, 3))) == {"kd"}
    with pytest.raises(DglkdError, match="student: expected dglkd.Knowledge"):
        method([[1.0, 2.0, 3.0]], torch.randn(1, 3))


def test_misspelt_constants_and_weights_are_errors_not_silent_defaults():
    with pytest.raises(DglkdError, match="weigth: unknown key"):
        dglkd.compose(kd={"weigth": 0.5})
    with pytest.raises(DglkdError, match="compose.kd.weight: expected a number"):
        dglkd.compose(kd={"weight": "high"})
    with pytest.raises(DglkdError, match="no term 'cee'"):
        dglkd.build_method("kd", 3).weight("cee")


def test_every_method_constant_has_a_description():
    for name in dglkd.METHODS.names():
        for field, info in dglkd.METHODS.get(name).Params.model_fields.items():
            assert info.description, f"{name}.{field} has no description"


# -- registration -----------------------------------------------------------------------
def test_registering_again_is_harmless_and_a_taken_name_is_one_line():
    namespace: dict = {}
    source = textwrap.dedent('''
        import dglkd
        @dglkd.register_method("notebook_method")
        class Mine(dglkd.DistillMethod):
            def loss_terms(self, batch):
                return {"notebook_method": batch.student.logits.sum() * 0}
    ''')
    exec(compile(source, "<cell>", "exec"), namespace)
    exec(compile(source, "<cell>", "exec"), namespace)  # the cell run twice
    with pytest.raises(DglkdError, match="'kd' is already registered by dglkd.methods.kd.KD"):
        @dglkd.register_method("kd")
        class Impostor(dglkd.DistillMethod):
            pass


# -- the one-call context -----------------------------------------------------------------
def test_context_for_probes_shapes_and_labels_the_way_the_engine_does():
    from tests.conftest import cora_backend

    student = dglkd.models.build_model("mlp", 7, 1433, hidden=32)
    teacher = dglkd.models.build_model("gcn", 7, 1433, hidden=16)
    backend = cora_backend()
    engine = backend.method_context(student, teacher)
    graph = backend.train.graph  # with the self loops the engine adds
    mine = dglkd.context_for(student, teacher, (graph, graph.ndata["feat"]),
                             labels=graph.ndata["label"], train_mask=graph.ndata["train_mask"])
    assert mine.num_instances == engine.num_instances == 2708
    assert torch.equal(mine.instance_labels, engine.instance_labels)
    assert mine.shape("student", "hidden") == (32,) and mine.shape("teacher", "hidden") == (16,)
    with pytest.raises(DglkdError, match="dglkd.context_for"):
        dglkd.MethodContext(7).shape("student", "pool")


def test_hkd_in_a_home_made_cnn_loop_with_iterate_minibatches_learns_mnist(one_thread):
    """The README's image route: positions from iterate_minibatches key HKD's memory bank."""
    from dglkd.data.images import iterate_minibatches
    from dglkd.models import build_model

    torch.manual_seed(0)
    task = dglkd.data.load("mnist", train_size=1000, val_size=200)
    train = task.splits["train"]
    teacher = build_model("cnn_small", 10, task.image_shape, widths=[8, 16, 32])
    student = build_model("cnn_tiny", 10, task.image_shape)
    opt_t = torch.optim.Adam(teacher.parameters(), 3e-3)
    for _ in range(5):
        for images, labels, _ in iterate_minibatches(task, "train", 50, shuffle=True):
            opt_t.zero_grad()
            F.cross_entropy(teacher(images), labels).backward()
            opt_t.step()
    context = dglkd.context_for(student, teacher, task.images[train[:2]],
                                labels=task.labels[train])
    objective = dglkd.compose(ce=1.0, kd=1.0, context=context,
                              hkd={"weight": 1.0, "embed_dim": 32, "negatives": "batch"})
    optimizer = torch.optim.Adam([*student.parameters(), *objective.parameters()], 1e-2)
    student_names, teacher_names = objective.required_features()  # HKD's default: hidden
    for _ in range(8):
        for images, labels, index in iterate_minibatches(task, "train", 32, shuffle=True):
            with torch.no_grad():
                knowledge = dglkd.capture(teacher.eval(), teacher_names, images)
            terms = objective(dglkd.capture(student.train(), student_names, images), knowledge,
                              labels=labels, index=index)
            optimizer.zero_grad()
            sum(terms.values()).backward()
            optimizer.step()
    test = task.splits["test"][:2000]
    with torch.no_grad():
        acc = (student.eval()(task.images[test]).argmax(-1) == task.labels[test]).float().mean()
    assert acc > 0.75  # 0.83 measured; the teacher reaches 0.85


# -- data helpers -------------------------------------------------------------------------
def test_data_load_returns_the_engines_tasks_and_names_bad_options():
    assert dglkd.data.load("citeseer").num_classes == 6
    npz = dglkd.data.load("npz", seed=1)
    assert npz.graph.num_nodes() == 2485
    assert dglkd.data.load("digits", train_size=100, val_size=50).split_sizes()["train"] == 100
    with pytest.raises(DglkdError, match="lcc: not an option of dataset 'cora'"):
        dglkd.data.load("cora", lcc=False)
    with pytest.raises(DglkdError, match="dataset: unknown 'pubmed'"):
        dglkd.data.load("pubmed")


# -- configs ------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, message", [
    ("data", {"name": "cora", "lcc": False}, "data.lcc: does not apply to dataset 'cora'"),
    ("data", {"name": "mnist", "inductive": True}, "data.inductive: does not apply"),
    ("train", {"fanouts": [5, 5]}, "train.fanouts: set train.batch_size too"),
    ("teacher_train", {"batch_size": 64, "fanouts": [5, 5, 5]},
     "teacher_train.fanouts: 3 fan-outs for a 2-layer gcn"),
    ("method", {"terms": {"kd": {"kd_temperature": 2}}}, "method.terms.kd.kd_temperature"),
    ("imports", ["no_such_module_here"], "imports: cannot import 'no_such_module_here'"),
])
def test_keys_that_cannot_apply_are_one_line_errors(small_cora, key, value, message):
    from dglkd.config import config_from_dict

    small_cora[key] = value
    with pytest.raises(DglkdError, match=message):
        config_from_dict(small_cora)


def test_a_graph_without_validation_nodes_is_a_one_line_error(small_cora, write_config, cli,
                                                              tmp_path):
    small_cora["data"].update(split="per_class", val_per_class=0)
    code, _, err = cli("distill", write_config(small_cora), "--out", tmp_path / "runs")
    assert code == 2 and "has no validation nodes" in err and len(err.strip().splitlines()) == 1


# -- a user's method end to end -----------------------------------------------------------
def _dglkd(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dglkd", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_user_method_from_its_own_module_runs_in_distill_compare_and_evaluate(
        small_cora, tmp_path):
    (tmp_path / "my_methods.py").write_text(USER_MODULE)
    small_cora.update(imports=["my_methods"],
                      method={"terms": {"ce": 0.1, "cosine_kd": {"weight": 1.0, "scale": 2.0}}},
                      compare={"mine": {"terms": {"cosine_kd": 1.0}}}, cache_dir="cache")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(small_cora))

    distilled = _dglkd(tmp_path, "distill", "config.yaml", "--out", "runs")
    assert distilled.returncode == 0, distilled.stderr
    assert "loss = 0.1*ce + 1*cosine_kd" in distilled.stdout
    (run_dir,) = (tmp_path / "runs").glob("small_cora-*")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["student"]["test_acc"] > results["baseline"]["test_acc"] + 0.05
    assert results["student"]["test_acc"] > 0.65

    evaluated = _dglkd(tmp_path, "evaluate", str(run_dir))
    assert evaluated.returncode == 0, evaluated.stderr
    compared = _dglkd(tmp_path, "compare", "config.yaml", "--methods", "mine,cosine_kd",
                      "--out", "runs")
    assert compared.returncode == 0, compared.stderr
    (table,) = [json.loads(path.read_text())
                for path in (tmp_path / "runs").glob("*/comparison.json")]
    assert table["methods"]["mine"]["test_acc"] > 0.65
    assert table["methods"]["cosine_kd"]["formula"] == "loss = 1*cosine_kd"


def test_compare_runs_the_configs_own_constants_and_says_which(small_cora, write_config, cli,
                                                               tmp_path):
    small_cora.update(method={"name": "kd", "temperature": 7.0}, baseline=False)
    small_cora["teacher_train"]["epochs"] = 5
    small_cora["train"]["epochs"] = 5
    small_cora["cache_dir"] = str(tmp_path / "cache")
    small_cora["log"] = {"progress": False, "tensorboard": True}
    code, _, err = cli("compare", write_config(small_cora), "--methods", "kd,ce",
                       "--out", tmp_path / "runs")
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").glob("small_cora-*")
    table = json.loads((run_dir / "comparison.json").read_text())["methods"]
    assert table["kd"]["constants"]["kd"]["temperature"] == 7.0
    assert table["ce"]["constants"] == {"ce": {"name": "ce", "weight": 1.0}}
    assert "temperature=7.0" in (run_dir / "comparison.md").read_text()

    # Each phase's hparams are its own objective's constants (the raw event files hold
    # the hparam names as text): the teacher's CE, never the student's KD temperature.
    teacher_hparams = "".join(p.read_bytes().decode("latin-1")
                              for p in (run_dir / "tb" / "teacher_seed0").rglob("events.*"))
    assert "method.ce.weight" in teacher_hparams and "temperature" not in teacher_hparams
    kd_hparams = "".join(p.read_bytes().decode("latin-1")
                         for p in (run_dir / "tb" / "kd_seed0").rglob("events.*"))
    assert "method.kd.temperature" in kd_hparams


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe):
    from dglkd.config import load_config

    config = load_config(recipe)
    assert config.name == recipe.stem

"""The image engine: teacher, baseline and distilled student on small real MNIST and a tiny
CIFAR-100-layout file, results files, teacher cache, kill-and-resume, the projector hook,
a method's first stage."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dglkd.config import load_config
from dglkd.engine.image import ImageBackend
from dglkd.engine.loop import fit
from dglkd.engine.run import Experiment
from dglkd.engine.step import make_phase, pretrain
from dglkd.errors import DglkdError
from dglkd.methods import DistillMethod, Knowledge, MethodContext, Recipe, compose
from dglkd.methods.base import DistillBatch, MethodParams
from dglkd.methods.kd import KD, KDParams
from tests.conftest import MNIST_IMAGES, mnist_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(autouse=True)
def one_thread():
    # Two shared cores: one thread each avoids oversubscription (the engine never sets it).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def accuracies(results: dict) -> dict[str, float]:
    return {role: results[role]["test_acc"] for role in ("teacher", "baseline", "student")}


# ----------------------------------------------------------------------- whole experiments


def test_distill_on_mnist_writes_results_and_caches_the_teacher(mnist_root, tmp_path):
    overrides = mnist_overrides(mnist_root, tmp_path / "cache")
    config = load_config(CONFIGS / "mnist_kd.yaml", overrides)
    threads = torch.get_num_threads()
    results = Experiment.create(config, tmp_path / "runs", say=lambda _msg: None).distill()

    assert torch.get_num_threads() == threads
    assert results["method"] == "ce+kd" and results["formula"] == "loss = 1*ce + 1*kd"
    assert results["teacher"]["model"] == "cnn_small" and results["student"]["model"] == "cnn_tiny"
    assert results["teacher"]["params"] > 10 * results["student"]["params"]
    for role in ("teacher", "baseline", "student"):
        assert 0.0 <= results[role]["test_acc"] <= 1.0
    inference = results["inference"]
    assert inference["targets"] == MNIST_IMAGES - 300  # the whole test split (< 1,024)
    assert inference["teacher_ms"] > 0 and inference["student_ms"] > 0
    assert inference["speedup"] == pytest.approx(inference["teacher_ms"] / inference["student_ms"])
    run_dir = Path(results["run_dir"])
    assert json.loads((run_dir / "results.json").read_text())["student"]["runs"]
    assert "distilled student" in (run_dir / "results.md").read_text()
    for phase in ("teacher_seed0", "baseline_seed0", "student_seed0"):
        assert (run_dir / "models" / f"{phase}.pt").is_file()
        assert any((run_dir / "tb" / phase).glob("events.out.tfevents.*"))
    history = json.loads((run_dir / "phases" / "student_seed0.json").read_text())["history"]
    assert {"total", "ce", "kd", "train_acc", "val_acc", "test_acc"} <= set(history[0])
    teacher = json.loads((run_dir / "phases" / "teacher_seed0.json").read_text())["history"]
    assert teacher[1]["total"] < teacher[0]["total"]
    # KD has no embeddings: no projector files.
    assert not (run_dir / "tb" / "student_seed0" / "projector_config.pbtxt").exists()

    messages: list[str] = []
    again = Experiment.create(config, tmp_path / "runs", say=messages.append).train_teachers()
    assert any("loaded from cache" in m for m in messages)
    assert again["teacher"]["test_acc"] == results["teacher"]["test_acc"]


def run_cli(*args: str, kill_after: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DGLBACKEND": "pytorch", "OMP_NUM_THREADS": "1"}
    launcher = (["-m", "dglkd"] if kill_after is None
                else [str(ROOT / "tests" / "kill_after.py"), kill_after])
    return subprocess.run([sys.executable, *launcher, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def cli_distill(out: Path, overrides: list[str], kill_after: str | None = None):
    sets = [arg for item in overrides for arg in ("--set", item)]
    return run_cli("distill", str(CONFIGS / "mnist_kd.yaml"), "--out", str(out), *sets,
                   kill_after=kill_after)


def only_run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if (p / "config.yaml").is_file()]
    return run_dir


def test_resume_after_a_kill_mid_phase_matches_an_uninterrupted_run(mnist_root, tmp_path):
    # One cache: the killed run loads the teacher the whole run trained.
    overrides = mnist_overrides(mnist_root, tmp_path / "cache")
    whole = cli_distill(tmp_path / "whole", overrides)
    assert whole.returncode == 0, whole.stderr
    killed = cli_distill(tmp_path / "killed", overrides, kill_after="student_seed0:0")
    assert killed.returncode == -9, killed.stderr  # SIGKILL right after epoch 0's checkpoint
    run_dir = only_run_dir(tmp_path / "killed")
    assert (run_dir / "checkpoints" / "student_seed0.pt").is_file()
    assert not (run_dir / "results.json").exists()

    resumed = run_cli("distill", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    expected = json.loads((only_run_dir(tmp_path / "whole") / "results.json").read_text())
    got = json.loads((run_dir / "results.json").read_text())
    assert accuracies(got) == accuracies(expected)

    def history(folder: Path) -> list[dict]:
        return json.loads((folder / "phases" / "student_seed0.json").read_text())["history"]

    assert history(run_dir) == history(only_run_dir(tmp_path / "whole"))


def write_cifar100(folder: Path, n_train: int, n_test: int) -> Path:
    """A CIFAR-100 python archive layout with random images (pickles of numpy arrays)."""
    root = folder / "cifar-100-python"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [int(i) % 100 for i in range(n)]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def test_cifar_recipe_runs_a_few_steps_on_a_tiny_file(tmp_path):
    # resnet32x4 takes about 4 s per 32-image step on one CPU thread: the test runs the
    # VGG13 → MobileNetV2 recipe (its real models, shrunk data and one epoch).
    path = write_cifar100(tmp_path / "data", n_train=80, n_test=32)
    config = load_config(CONFIGS / "cifar100_vgg13_mobilenetv2_hkd_kd.yaml", [
        f"data.path={path}", "data.val_size=16", "n_runs=1", "teacher_train.epochs=1",
        "train.epochs=1", "teacher_train.batch_size=16", "train.batch_size=16",
        "log.progress=false", f"cache_dir={tmp_path / 'cache'}"])
    results = Experiment.create(config, tmp_path / "runs", say=lambda _msg: None).distill()

    assert (results["teacher"]["model"], results["student"]["model"]) == ("vgg13", "mobilenetv2")
    assert results["inference"]["targets"] == 32
    history = json.loads((Path(results["run_dir"]) / "phases" / "student_seed0.json")
                         .read_text())["history"]
    assert {"ce", "kd", "hkd", "total"} <= set(history[0])
    assert all(np.isfinite(history[0][term]) for term in ("ce", "kd", "hkd", "total"))


@pytest.mark.parametrize("name", ["mnist_kd", "mnist_hkd",
                                  "cifar100_resnet32x4_resnet8x4_hkd",
                                  "cifar100_resnet32x4_resnet8x4_hkd_kd",
                                  "cifar100_vgg13_mobilenetv2_hkd",
                                  "cifar100_vgg13_mobilenetv2_hkd_kd"])
def test_recipes_load_and_run_on_cpu_by_default(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.device == "cpu" and config.data.is_image
    if name.startswith("cifar100"):
        for train in (config.teacher_train, config.train):
            assert (train.epochs, train.batch_size, train.optimizer) == (240, 64, "sgd")
            assert (train.milestones, train.gamma, train.weight_decay) == ([150, 180, 210],
                                                                          0.1, 5e-4)
        assert config.teacher_train.lr == 0.05
        spec = config.method.spec()
        weights = {label: member.weight for label, member in spec.items()}
        # HKD+KD adds the KD term (T = 4) to CE + 3·HKD; plain HKD has none.
        assert weights == ({"ce": 1.0, "kd": 1.0, "hkd": 3.0} if name.endswith("_kd")
                           else {"ce": 1.0, "hkd": 3.0})
        if name.endswith("_kd"):
            assert spec["kd"].params == {"temperature": 4.0}


# ------------------------------------------------------------------------ projector hook


def test_hkd_writes_holistic_embeddings_for_the_projector(mnist_root, tmp_path):
    overrides = mnist_overrides(mnist_root, tmp_path / "cache", epochs=1) + ["baseline=false"]
    config = load_config(CONFIGS / "mnist_hkd.yaml", overrides)
    results = Experiment.create(config, tmp_path / "runs", say=lambda _msg: None).distill()
    tb = Path(results["run_dir"]) / "tb" / "student_seed0"
    assert "embeddings {" in (tb / "projector_config.pbtxt").read_text()
    assert list(tb.glob("*/*/tensors.tsv")) and list(tb.glob("*/*/metadata.tsv"))


class EmbeddingKD(KD):
    """KD that shows the student's logits in the projector."""

    def embeddings(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        return {"student_logits": batch.student.logits}


def small_backend(mnist_root: Path, *overrides: str) -> ImageBackend:
    config = load_config(CONFIGS / "mnist_kd.yaml",
                         [f"data.root={mnist_root}", "data.train_size=200",
                          "data.val_size=100", "train.batch_size=32", *overrides])
    backend = ImageBackend(config, torch.device("cpu"))
    backend.load(0)
    return backend


def embedding_kd(backend: ImageBackend, student, teacher) -> Recipe:
    """CE + a KD whose embeddings are the student's logits (logged as ``kd.student_logits``)."""
    context = backend.method_context(student, teacher)
    return compose(ce=1.0, kd=EmbeddingKD(KDParams(), context), context=context)


def test_projector_writes_a_methods_embeddings_of_validation_images(mnist_root, tmp_path):
    backend = small_backend(mnist_root, "train.epochs=1")
    torch.manual_seed(0)
    teacher = backend.new_model(backend.config.teacher, "teacher")
    student = backend.new_model(backend.config.student, "student")
    objective = embedding_kd(backend, student, teacher)
    cfg, generator = backend.config.train, backend.generator()
    knowledge = backend.teacher_knowledge(teacher, objective)
    phase = make_phase("student_seed0", student, objective,
                       backend.batches(student, cfg, knowledge, generator), cfg,
                       lambda: backend.evaluate(student), teacher=teacher, generator=generator,
                       on_end=backend.projector(student, objective, teacher))
    fit(phase, tmp_path, tmp_path / "tb", show_progress=False)

    subdirs = list((tmp_path / "tb").glob("*/kd.student_logits"))
    assert len(subdirs) == 1 and 'tensor_name: "kd.student_logits:' in (
        tmp_path / "tb" / "projector_config.pbtxt").read_text()
    labels = (subdirs[0] / "metadata.tsv").read_text().split()
    assert labels == [str(y) for y in backend.images("val", 64)[1].tolist()]
    assert len((subdirs[0] / "tensors.tsv").read_text().splitlines()) == 64


def test_projector_can_be_switched_off(mnist_root):
    backend = small_backend(mnist_root, "log.embedding_projector=false")
    student = backend.new_model(backend.config.student, "student")
    teacher = backend.new_model(backend.config.teacher, "teacher")
    objective = embedding_kd(backend, student, teacher)
    assert backend.projector(student, objective, teacher) is None


# --------------------------------------------------------------------- backend details


class TeacherProbe(DistillMethod):
    """A first stage that fits a linear map from the teacher's pooled feature to its logits."""

    Params = MethodParams
    name = "teacher_probe"

    def __init__(self, context: MethodContext) -> None:
        super().__init__(MethodParams(), context)
        self.map = torch.nn.Linear(context.dim("teacher", "pool"), context.num_classes)
        self.frozen = False

    def required_features(self) -> tuple[list[str], list[str]]:
        return [], ["pool"]

    def pretrain_epochs(self) -> int:
        return 2

    def pretrain_terms(self, teacher: Knowledge, index=None) -> dict[str, torch.Tensor]:
        assert index is not None and int(index.min()) >= 0 and int(index.max()) < 200
        fitted = self.map(teacher.feat("pool").flatten(1))
        return {"fit": (fitted - teacher.logits).pow(2).mean()}

    def end_pretraining(self) -> None:
        self.frozen = True
        self.map.requires_grad_(False)


def test_pretraining_stage_is_seeded_and_trains_only_the_method(mnist_root, tmp_path):
    backend = small_backend(mnist_root)
    torch.manual_seed(0)
    teacher = backend.new_model(backend.config.teacher, "teacher")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = backend.config.train
    stages = []
    for _ in range(2):
        torch.manual_seed(1)
        method = TeacherProbe(backend.method_context(teacher, teacher))
        objective = compose(ce=1.0, probe=method, context=method.context)
        assert objective.pretrain_epochs() == 2
        start = method.map.weight.detach().clone()
        # As the engine runs a first stage: batches ordered by the run's seed.
        pretrain(objective, backend.batches(teacher, cfg, None, backend.generator()),
                 teacher, cfg)
        assert method.frozen and not method.map.weight.requires_grad
        assert not torch.equal(method.map.weight, start)
        stages.append(method.map.weight.detach())
    assert torch.equal(stages[0], stages[1])
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


class DivergingProbe(TeacherProbe):
    def pretrain_terms(self, teacher: Knowledge, index=None) -> dict[str, torch.Tensor]:
        return {"fit": super().pretrain_terms(teacher, index)["fit"] * float("inf")}


def test_a_diverging_first_stage_stops_with_one_line(mnist_root):
    backend = small_backend(mnist_root)
    teacher = backend.new_model(backend.config.teacher, "teacher")
    method = DivergingProbe(backend.method_context(teacher, teacher))
    objective = compose(ce=1.0, probe=method, context=method.context)
    cfg = backend.config.train
    with pytest.raises(DglkdError, match=r"first-stage loss is (inf|nan) at epoch 0; likely "
                                         r"cause: its learning rate"):
        pretrain(objective, backend.batches(teacher, cfg, None, backend.generator()),
                 teacher, cfg)
    assert not method.frozen


def test_context_probes_shapes_and_counts_training_images(mnist_root):
    backend = small_backend(mnist_root)
    teacher = backend.new_model(backend.config.teacher, "teacher")
    student = backend.new_model(backend.config.student, "student").train()
    context = backend.method_context(student, teacher)
    assert context.shape("student", "pool") == (32,) and context.shape("teacher", "pool") == (64,)
    assert context.shape("student", "stage1")[0] == 8
    assert student.training  # the probe restores train mode
    assert context.num_instances == 200 and len(context.instance_labels) == 200
    with pytest.raises(DglkdError, match="no teacher network"):
        backend.method_context(student, None).shape("teacher", "pool")
    assert backend.cache_logits(teacher).shape == (100, 10)
    assert set(backend.evaluate(student)) == {"train_acc", "val_acc", "test_acc"}


@pytest.mark.parametrize("batch_size", [1, 201])
def test_batch_size_must_fit_the_training_split(mnist_root, batch_size):
    backend = small_backend(mnist_root)
    model = backend.new_model(backend.config.student, "student")
    cfg = backend.config.train.model_copy(update={"batch_size": batch_size})
    with pytest.raises(DglkdError, match="batch_size"):
        backend.batches(model, cfg, None, backend.generator())

"""Shared fixtures: small real-data configs and a way to run the CLI in-process."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("DGLBACKEND", "pytorch")
# ogb checks PyPI for a newer version on import; tests never touch the network.
os.environ.setdefault("OUTDATED_IGNORE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine they lose a lot."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def planetoid_root(tmp_path_factory) -> str:
    """One processed copy of the bundled Planetoid files for the whole session."""
    return str(tmp_path_factory.mktemp("planetoid"))


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory) -> str:
    """A teacher cache shared by the tests whose teachers are identical."""
    return str(tmp_path_factory.mktemp("teacher_cache"))


def small_cora_config(planetoid_root: str, teacher_cache: str) -> dict:
    """GCN → MLP with GLNN on the real Cora, sized to train in a few seconds."""
    return {
        "name": "small_cora",
        "cache_dir": teacher_cache,
        "seed": 0,
        "n_runs": 1,
        "data": {"name": "cora", "root": planetoid_root},
        "teacher": {"model": "gcn", "hidden": 32, "layers": 2, "dropout": 0.5},
        "teacher_train": {"epochs": 60, "lr": 0.01, "checkpoint_every": 10},
        "student": {"model": "mlp", "hidden": 64, "layers": 2, "dropout": 0.5},
        "method": {"name": "glnn", "lam": 0.0},
        "train": {"epochs": 80, "lr": 0.01, "checkpoint_every": 10},
        "log": {"progress": False},
    }


def cora_backend(**train: object):
    """The engine's graph backend on the bundled Cora, loaded for seed 0 (``train``: keys
    of the config's ``train`` section, e.g. batch_size for a mini-batch config)."""
    import torch
    from dglkd.config import config_from_dict
    from dglkd.engine.graph import GraphBackend

    config = config_from_dict({"data": {"name": "cora"}, "train": train,
                               "log": {"progress": False}})
    backend = GraphBackend(config, torch.device("cpu"), say=lambda _message: None)
    backend.load(0)
    return backend


@pytest.fixture
def small_cora(planetoid_root, teacher_cache) -> dict:
    return small_cora_config(planetoid_root, teacher_cache)


@pytest.fixture
def write_config(tmp_path):
    def write(raw: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


# What a phase cost (results.json records it per seed): it differs between two runs of the
# same phase, so "ends like an uninterrupted run" compares everything else.
PHASE_COSTS = ("wall_s", "peak_rss_gb")


def learned(runs: list[dict]) -> list[dict]:
    """Per-seed phase summaries without their costs: what the phase learned."""
    return [{k: v for k, v in run.items() if k not in PHASE_COSTS} for run in runs]


def run_cli(*args: object) -> tuple[int, str, str]:
    """Run ``dglkd`` in-process; returns (exit code, stdout, stderr)."""
    from dglkd.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def distill_cora(small_cora, write_config, tmp_path):
    """``dglkd distill`` of the small Cora config with another ``method``: its stdout,
    results and the distilled student's per-epoch history."""
    import json

    def distill(method: dict) -> tuple[str, dict, list[dict]]:
        code, stdout, err = run_cli("distill", write_config(dict(small_cora, method=method)),
                                    "--out", tmp_path / "runs")
        assert code == 0, err
        run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
        results = json.loads((run_dir / "results.json").read_text())
        history = json.loads((run_dir / "phases" / "student_seed0.json").read_text())
        return stdout, results, history["history"]

    return distill


def rerun_of(model, x):
    """The re-run ``adv_aug`` and ``mixup`` are handed: ``model`` on other rows than ``x``."""
    from dglkd.methods import Knowledge
    from dglkd.methods.adv import Rerun

    return Rerun(x, lambda feat: Knowledge(model(feat)))


@pytest.fixture
def rerun_term_losses():
    """One term's value over ``steps`` Adam steps of a small MLP on random inputs and
    teacher logits, trained by ``recipe`` whose members re-run the student (adv_aug,
    mixup)."""
    import torch
    from torch import nn

    from dglkd.methods import Knowledge

    def train(recipe, term: str, steps: int) -> list[float]:
        torch.manual_seed(3)
        x, teacher = torch.randn(64, 6), torch.randn(64, 3) * 3
        model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        losses = []
        for _ in range(steps):
            terms = recipe(Knowledge(model(x)), Knowledge(teacher), rerun=rerun_of(model, x))
            optimizer.zero_grad()
            recipe.backward(terms, model)
            optimizer.step()
            losses.append(terms[term].item())
        return losses

    return train


# -- small real MNIST (the image engine's tests and methods on image batches) -----------------
MNIST_IMAGES = 600  # train 200 / val 100 / test 300: a few seconds per phase


def write_idx(path: Path, array, magic: int) -> None:
    import numpy as np

    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    """The first images of the bundled MNIST as a folder of uncompressed idx files."""
    from dglkd.data.images import BUNDLED_MNIST, IDX_IMAGES, IDX_LABELS, read_idx

    folder = tmp_path_factory.mktemp("mnist")
    images = read_idx(BUNDLED_MNIST / "t10k-images-idx3-ubyte.gz", IDX_IMAGES)
    labels = read_idx(BUNDLED_MNIST / "t10k-labels-idx1-ubyte.gz", IDX_LABELS)
    write_idx(folder / "t10k-images-idx3-ubyte", images[:MNIST_IMAGES], IDX_IMAGES)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[:MNIST_IMAGES], IDX_LABELS)
    return folder


def mnist_overrides(root: Path, cache: Path, epochs: int = 2) -> list[str]:
    """``--set`` items that shrink an MNIST config to the ``mnist_root`` images."""
    return [f"data.root={root}", "data.train_size=200", "data.val_size=100", "n_runs=1",
            f"teacher_train.epochs={epochs}", f"train.epochs={epochs}",
            "teacher_train.batch_size=32", "train.batch_size=32",
            "teacher_train.checkpoint_every=1", "train.checkpoint_every=1",
            "log.progress=false", f"cache_dir={cache}"]

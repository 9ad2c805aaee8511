"""mixup: the student's inputs mixed pairwise, trained towards the teacher's mixed outputs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import dglkd
from dglkd.config import load_config
from dglkd.engine.run import Experiment
from dglkd.errors import DglkdError
from dglkd.methods import Knowledge, build_method
from dglkd.methods.adv import Rerun
from dglkd.methods.mixup import mixup_loss
from tests.conftest import REPO, mnist_overrides, rerun_of

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mixup_loss_matches_hand_computation():
    # identity "student": its logits are its inputs. Rows 0 and 1 swap partners with
    # λ = 0.75 and 0.5; row 2 is not mixed (outside rows).
    x = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [5.0, 5.0]])
    teacher = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 9.0]])
    loss = mixup_loss(rerun_of(nn.Identity(), x), teacher, torch.tensor([0, 1]),
                      torch.tensor([0.75, 0.5]), torch.tensor([1, 0]))
    # row 0: x̃ = (0.75·ln3, 0), p = (1/2, 1/2) and (3/4, 1/4) → p̃ = (9/16, 7/16);
    # row 1: x̃ = (0.5·ln3, 0), p̃ = (5/8, 3/8)
    def kl(target: list[float], logits: list[float]) -> float:
        log_q = torch.tensor(logits).log_softmax(0).tolist()
        return sum(p * (math.log(p) - lq) for p, lq in zip(target, log_q))

    expected = (kl([9 / 16, 7 / 16], [0.75 * math.log(3.0), 0.0])
                + kl([5 / 8, 3 / 8], [0.5 * math.log(3.0), 0.0])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_mixup_with_lambda_one_is_the_kd_term():
    # λ = 1 leaves every instance as it is: the term is GLNN's KL at the same temperature
    torch.manual_seed(0)
    x, teacher = torch.randn(6, 4), torch.randn(6, 3)
    model = nn.Linear(4, 3)
    rows = torch.arange(6)
    loss = mixup_loss(rerun_of(model, x), teacher, rows, torch.ones(6), rows.flip(0), 2.0)
    kd = build_method("kd", 3, temperature=2.0)(Knowledge(model(x)), Knowledge(teacher))["kd"]
    assert loss.item() == pytest.approx(kd.item(), rel=1e-5)


def test_mixup_mixes_only_the_distilled_rows():
    torch.manual_seed(1)
    x, teacher = torch.randn(5, 4), torch.randn(5, 3)
    seen = []
    method = build_method("mixup", 3, alpha=1.0)
    recipe = dglkd.compose(mix=(1.0, method))
    mask = torch.tensor([True, False, True, True, False])

    def run(feat: torch.Tensor) -> Knowledge:
        seen.append(feat)
        return Knowledge(feat[:, :3])

    recipe(Knowledge(x[:, :3]), Knowledge(teacher), distill_mask=mask, rerun=Rerun(x, run))
    assert torch.equal(seen[0][~mask], x[~mask])   # rows without teacher knowledge untouched
    assert not torch.equal(seen[0][mask], x[mask])


def test_mixup_bad_input_is_a_one_line_error():
    with pytest.raises(DglkdError, match="alpha") as info:
        build_method("mixup", 3, alpha=0.0)
    assert "\n" not in str(info.value)
    recipe = dglkd.compose(mixup=1.0, context=3)
    assert recipe.needs_rerun
    with pytest.raises(DglkdError, match="rerun"):
        recipe(Knowledge(torch.randn(2, 3)), Knowledge(torch.randn(2, 3)))
    # sampled blocks: more input rows than instances
    rerun = Rerun(torch.randn(7, 4), lambda feat: Knowledge(torch.randn(2, 3)))
    with pytest.raises(DglkdError, match="7 input rows for 2 instances") as info:
        recipe(Knowledge(torch.randn(2, 3)), Knowledge(torch.randn(2, 3)), rerun=rerun)
    assert "\n" not in str(info.value)


def test_training_lowers_the_mixup_term(rerun_term_losses):
    losses = rerun_term_losses(dglkd.compose(mixup={"alpha": 0.4}, context=3), "mixup", 150)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_glnn_with_mixup_distils_on_cora(distill_cora):
    # the engine passes the re-run to the recipe: GCN teacher, MLP on glnn + mixup
    stdout, results, history = distill_cora({"terms": {"glnn": 1.0, "mixup": {"alpha": 0.2}}})
    assert "loss = 1*glnn.kd + 1*mixup" in stdout
    assert history[-1]["mixup"] < history[0]["mixup"]
    # GCN teacher ≈ 0.8, MLP alone ≈ 0.55 on Cora's public split (margin below the run's)
    assert results["student"]["test_acc"] > results["baseline"]["test_acc"] + 0.05
    assert results["student"]["test_acc"] > 0.6


def test_mixup_on_image_batches(mnist_root, tmp_path):
    # the engine's image batches: a CNN student re-run on mixed images (one λ per image)
    overrides = mnist_overrides(mnist_root, tmp_path / "cache") + [
        "baseline=false",
        "method={terms: {ce: 1.0, kd: 1.0, mixup: {alpha: 0.4, temperature: 4.0}}}"]
    config = load_config(REPO / "configs" / "mnist_kd.yaml", overrides)
    results = Experiment.create(config, tmp_path / "runs", say=lambda _msg: None).distill()
    assert results["formula"] == "loss = 1*ce + 1*kd + 1*mixup"
    run_dir = Path(results["run_dir"])
    history = json.loads((run_dir / "phases" / "student_seed0.json").read_text())["history"]
    assert all(math.isfinite(epoch["mixup"]) and epoch["mixup"] > 0 for epoch in history)
    assert results["student"]["test_acc"] > 0.2  # ten classes: chance is 0.1

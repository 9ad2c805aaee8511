"""KD and GLNN: the loss against hand computations, masks, and that training lowers it."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dglkd
from dglkd import Knowledge, build_method


def test_kd_matches_a_hand_computation():
    # T = 2: softmax([1.5, 1, .5]) = p and softmax([.5, 1, 1.5]) = reversed p, so
    # KL(p ‖ q) = (p0 − p2)·ln(p0 / p2) = (p0 − p2)·1; times T² = 4.
    e = [math.exp(1.5), math.exp(1.0), math.exp(0.5)]
    p0, p2 = e[0] / sum(e), e[2] / sum(e)
    expected = 4 * (p0 - p2) * 1.0
    kd = build_method("kd", 3, temperature=2.0)
    student = torch.tensor([[1.0, 2.0, 3.0], [0.3, 0.2, 0.1]])
    teacher = torch.tensor([[3.0, 2.0, 1.0], [0.3, 0.2, 0.1]])
    terms = kd(Knowledge(student), Knowledge(teacher))
    assert set(terms) == {"kd"}
    assert terms["kd"].item() == pytest.approx(expected / 2, rel=1e-5)  # mean over 2 rows
    assert str(kd) == "kd: loss = 1*kd"


def test_glnn_weights_and_masks_by_hand():
    glnn = build_method("glnn", 2, lam=0.25)
    student = torch.tensor([[0.0, math.log(3.0)], [5.0, -5.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    labels = torch.tensor([1, 0])
    terms = glnn(Knowledge(student), Knowledge(teacher), labels=labels,
                 label_mask=torch.tensor([True, False]), distill_mask=torch.tensor([True, False]))
    # Row 0 only: CE = −ln 0.75; the student's row equals the teacher's, so KL = 0.
    assert terms["ce"].item() == pytest.approx(0.25 * -math.log(0.75), rel=1e-6)
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-7)
    # Every node distilled: row 1 adds KL([.5,.5] ‖ softmax([5,−5])), averaged over 2 rows.
    terms = glnn(Knowledge(student), Knowledge(teacher), labels=labels,
                 label_mask=torch.tensor([True, False]))
    q = torch.softmax(torch.tensor([5.0, -5.0]), 0)
    kl_row1 = sum(0.5 * math.log(0.5 / q[i].item()) for i in range(2))
    assert terms["kd"].item() == pytest.approx(0.75 * kl_row1 / 2, rel=1e-5)
    assert glnn.formula() == "loss = 0.25*ce + 0.75*kd"


def test_teacher_gets_no_gradient():
    teacher_logits = torch.randn(4, 3, requires_grad=True)
    student_logits = torch.randn(4, 3, requires_grad=True)
    objective = dglkd.compose(ce=1.0, kd=1.0, context=3)  # KD's paper recipe
    terms = objective(Knowledge(student_logits), Knowledge(teacher_logits),
                      labels=torch.tensor([0, 1, 2, 0]))
    assert set(terms) == {"ce", "kd"}
    sum(terms.values()).backward()
    assert teacher_logits.grad is None and student_logits.grad is not None


def test_method_needs_what_it_uses():
    with pytest.raises(dglkd.DglkdError, match="needs the teacher"):
        build_method("kd", 3)(Knowledge(torch.randn(2, 3)))
    with pytest.raises(dglkd.DglkdError, match="needs labels"):
        build_method("glnn", 3, lam=0.5)(Knowledge(torch.randn(2, 3)),
                                          Knowledge(torch.randn(2, 3)))
    # In a recipe, the member that uses them asks for them.
    objective = dglkd.compose(ce=1.0, kd=1.0, context=3)
    with pytest.raises(dglkd.DglkdError, match="needs the teacher"):
        objective(Knowledge(torch.randn(2, 3)), labels=torch.tensor([0, 1]))
    with pytest.raises(dglkd.DglkdError, match="needs labels"):
        objective(Knowledge(torch.randn(2, 3)), Knowledge(torch.randn(2, 3)))
    # KD alone reads no labels; CE alone needs no teacher.
    assert set(build_method("kd", 3)(torch.randn(2, 3), torch.randn(2, 3))) == {"kd"}
    assert set(build_method("ce", 3)(torch.randn(2, 3), labels=torch.tensor([0, 1]))) == {"ce"}


def test_recipe_is_the_weighted_sum_of_its_methods():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    labels = torch.tensor([0, 1, 2, 0, 1])
    objective = dglkd.compose(ce=1.0, kd={"weight": 0.5, "temperature": 2.0}, context=3)
    terms = objective(Knowledge(student), Knowledge(teacher), labels=labels)
    assert set(terms) == {"ce", "kd"}
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(student, labels).item())
    kd = build_method("kd", 3, temperature=2.0)(Knowledge(student), Knowledge(teacher))["kd"]
    assert terms["kd"].item() == pytest.approx(0.5 * kd.item())
    assert str(objective) == "ce+kd: loss = 1*ce + 0.5*kd"
    # GLNN's two terms are logged under its label.
    glnn = dglkd.compose(glnn={"lam": 0.25}, context=3)
    assert list(glnn(Knowledge(student), Knowledge(teacher), labels=labels)) == ["glnn.ce",
                                                                                 "glnn.kd"]
    assert glnn.formula() == "loss = 0.25*glnn.ce + 0.75*glnn.kd"


@pytest.mark.parametrize("name, params", [("kd", {}), ("glnn", {})])
def test_training_lowers_the_distillation_loss(name, params):
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    teacher = torch.nn.Linear(16, 5)
    with torch.no_grad():
        teacher_logits = teacher(x) * 3
    student = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    method = build_method(name, 5, **params)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.01)
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss = sum(method(Knowledge(student(x)), Knowledge(teacher_logits)).values())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]

"""FitNet and RKD: hand-computed values, gradients, recipes with CE/KD, short training runs."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import dglkd
from dglkd.errors import DglkdError
from dglkd.methods import Knowledge, MethodContext, build_method
from dglkd.methods.recipe import build_recipe, recipe_spec


def _context(student: tuple[int, ...], teacher: tuple[int, ...], name: str = "hidden"):
    return MethodContext(3, student_shapes={name: student}, teacher_shapes={name: teacher})


def _knowledge(feat: torch.Tensor, name: str = "hidden") -> Knowledge:
    return Knowledge(torch.zeros(len(feat), 3), {name: feat})


def _smooth_l1(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


# -- FitNet --------------------------------------------------------------------------------
def test_fitnet_linear_hint_matches_hand_computation():
    context = _context((2,), (1, 2))
    method = build_method("fitnet", context)
    linear = method.projection[1]
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        linear.bias.copy_(torch.tensor([0.5, 0.0]))
    student = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    teacher = torch.tensor([[[1.0, 3.0]], [[0.0, 0.0]]])  # (N, heads=1, D=2): flattened
    # projections: (1.5, 3) and (0.5, -1); squared errors 0.25, 0, 0.25, 1 → mean 0.375
    terms = method(_knowledge(student), _knowledge(teacher))
    assert set(terms) == {"fitnet"}
    assert terms["fitnet"].item() == pytest.approx(0.375)
    assert str(method) == "fitnet: loss = 1*fitnet"
    # The paper recipe (the CRD benchmark's) weights the hint by 100, next to CE.
    paper = build_recipe(recipe_spec({"name": "fitnet"}), context)
    paper.members["fitnet"].load_state_dict(method.state_dict())
    terms = paper(_knowledge(student), _knowledge(teacher), labels=torch.tensor([0, 1]))
    assert set(terms) == {"ce", "fitnet"}
    assert terms["fitnet"].item() == pytest.approx(100 * 0.375)
    assert str(paper) == "ce+fitnet: loss = 1*ce + 100*fitnet"


def test_fitnet_uses_a_1x1_convolution_between_maps():
    method = build_method("fitnet", _context((2, 3, 3), (1, 3, 3)))
    conv = method.projection
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).view(1, 2, 1, 1))
        conv.bias.zero_()
    student = torch.zeros(1, 2, 3, 3)
    student[0, 0] = 1.0  # every pixel: 2·1 − 1·0 = 2
    teacher = torch.full((1, 1, 3, 3), 1.0)
    assert method(_knowledge(student), _knowledge(teacher))["fitnet"].item() == pytest.approx(1.0)


def test_fitnet_maps_of_different_resolution_are_refused():
    with pytest.raises(DglkdError, match="height/width"):
        build_method("fitnet", _context((2, 4, 4), (2, 8, 8)))


def test_fitnet_teacher_gets_no_gradient_student_and_projection_do():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    teacher, student = nn.Linear(5, 7), nn.Linear(5, 4)
    method = dglkd.compose(ce=1.0, kd=1.0, fitnet=100.0, context=_context((4,), (7,)))
    s_out, t_out = student(x), teacher(x)
    terms = method(
        Knowledge(s_out[:, :3], {"hidden": s_out}),
        Knowledge(t_out[:, :3], {"hidden": t_out}),
        labels=torch.tensor([0, 1, 2, 0, 1, 2]),
    )
    assert set(terms) == {"ce", "kd", "fitnet"}
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in [*student.parameters(), *method.parameters()])


def test_fitnet_training_lowers_the_hint_loss():
    torch.manual_seed(1)
    x = torch.randn(32, 6)
    teacher = torch.randn(32, 10)
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    method = build_method("fitnet", _context((4,), (10,)))
    opt = torch.optim.Adam([*student.parameters(), *method.parameters()], lr=0.01)
    losses = []
    for _ in range(60):
        loss = method(_knowledge(student(x)), _knowledge(teacher))["fitnet"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


# -- RKD -----------------------------------------------------------------------------------
def _points_distance_matrix(points: list[tuple[float, float]]) -> list[list[float]]:
    d = [[math.dist(p, q) for q in points] for p in points]
    mean = sum(v for row in d for v in row if v > 0) / sum(1 for row in d for v in row if v > 0)
    return [[v / mean for v in row] for row in d]


def _points_angles(points: list[tuple[float, float]]) -> list[float]:
    out = []
    for pi in points:
        for pj in points:
            for pk in points:
                a = (pj[0] - pi[0], pj[1] - pi[1])
                b = (pk[0] - pi[0], pk[1] - pi[1])
                na, nb = math.hypot(*a), math.hypot(*b)
                out.append(0.0 if na == 0 or nb == 0 else (a[0] * b[0] + a[1] * b[1]) / (na * nb))
    return out


def test_rkd_matches_hand_computation():
    s_pts = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    t_pts = [(0.0, 0.0), (1.0, 0.0), (0.0, 2.0)]
    method = build_method("rkd", _context((2,), (2,)))
    terms = method(_knowledge(torch.tensor(s_pts)), _knowledge(torch.tensor(t_pts)))
    assert set(terms) == {"distance", "angle"}
    assert str(method) == "rkd: loss = 25*distance + 50*angle"
    ds, dt = _points_distance_matrix(s_pts), _points_distance_matrix(t_pts)
    distance = sum(_smooth_l1(a, b) for ra, rb in zip(ds, dt) for a, b in zip(ra, rb)) / 9
    angle = sum(_smooth_l1(a, b) for a, b in zip(_points_angles(s_pts), _points_angles(t_pts))) / 27
    assert terms["distance"].item() == pytest.approx(25 * distance, rel=1e-5)
    assert terms["angle"].item() == pytest.approx(50 * angle, rel=1e-5)
    assert distance > 0 and angle > 0


def test_rkd_is_zero_for_a_scaled_copy():
    x = torch.randn(8, 5)
    method = build_method("rkd", _context((5,), (5,)))
    terms = method(_knowledge(x), _knowledge(3 * x))
    assert terms["distance"].item() == pytest.approx(0, abs=1e-5)
    assert terms["angle"].item() == pytest.approx(0, abs=1e-5)


def test_rkd_gradients_are_finite_with_duplicate_points():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    method = build_method("rkd", _context((2,), (2,)))
    loss = sum(method(_knowledge(x), _knowledge(torch.randn(3, 2))).values())
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_rkd_teacher_gets_no_gradient_and_large_sets_are_subsampled():
    torch.manual_seed(2)
    x = torch.randn(50, 4)
    teacher, student = nn.Linear(4, 6), nn.Linear(4, 3)
    method = dglkd.compose(ce=1.0, rkd={"max_instances": 10}, context=_context((3,), (6,)))
    s_out, t_out = student(x), teacher(x)
    terms = method(
        Knowledge(s_out, {"hidden": s_out}),
        Knowledge(t_out[:, :3], {"hidden": t_out}),
        labels=torch.zeros(50, dtype=torch.long),
    )
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_rkd_training_lowers_both_terms():
    torch.manual_seed(3)
    x = torch.randn(24, 6)
    teacher = torch.randn(24, 12)
    student = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 8))
    method = build_method("rkd", _context((8,), (12,)))
    opt = torch.optim.Adam(student.parameters(), lr=0.005)
    first = last = None
    for _ in range(80):
        terms = method(_knowledge(student(x)), _knowledge(teacher))
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        values = {k: v.item() for k, v in terms.items()}
        first, last = first or values, values
    assert last["distance"] < 0.7 * first["distance"]
    assert last["angle"] < 0.7 * first["angle"]


def test_kd_term_is_a_config_change():
    logits_s, logits_t = torch.randn(5, 3), torch.randn(5, 3)
    labels = torch.tensor([0, 1, 2, 0, 1])
    method = build_recipe(recipe_spec({"terms": {
        "ce": 1.0, "kd": {"weight": 2.0, "temperature": 3.0},
        "rkd": {"distance_weight": 0.0, "angle_weight": 0.0}}}), _context((2,), (2,)))
    terms = method(Knowledge(logits_s, {"hidden": torch.randn(5, 2)}),
                   Knowledge(logits_t, {"hidden": torch.randn(5, 2)}),
                   labels=labels)
    assert set(terms) == {"ce", "kd"}
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits_s, labels).item())
    p_t = F.softmax(logits_t / 3, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(logits_s / 3, dim=1))).sum(1).mean() * 9
    assert terms["kd"].item() == pytest.approx(2.0 * kl.item(), rel=1e-5)
    assert str(method) == "ce+kd+rkd: loss = 1*ce + 2*kd"

"""A user's own training loop, written the README's way (one ``objective.step`` per step):
schedules and MHGD's gradient clip take effect as in the engine, and a recipe that needs
them but is stepped another way says so once."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import dglkd
from dglkd.methods.recipe import RecipeStepWarning
from tests.test_mhgd import _setup as mhgd_setup

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULED = {"ce": 1.0, "kd": {"weight": 2.0, "temperature": 1.0,
                               "schedule": {"kind": "linear", "length": 4}}}


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 5, generator=g), torch.randn(32, 3, generator=g), \
        torch.randint(0, 3, (32,), generator=g)


def _student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def _recorded(loop) -> tuple[object, list[RecipeStepWarning]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = loop()
    return result, [w.message for w in caught if issubclass(w.category, RecipeStepWarning)]


def test_schedules_take_effect_in_a_user_loop_with_step():
    x, teacher, labels = _data()
    student = _student()
    objective = dglkd.compose(SCHEDULED)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    unweighted = dglkd.compose(kd={"temperature": 1.0})

    def loop():
        seen = []
        for epoch in range(6):
            logits = student(x)
            kd_alone = unweighted(logits.detach(), teacher)["kd"]
            terms = objective.step(logits, teacher, model=student, epoch=epoch,
                                   optimizer=optimizer, labels=labels)
            seen.append(terms["kd"].item() / kd_alone.item())
        return seen

    seen, said = _recorded(loop)
    assert seen == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])  # 2 x linear ramp over 4
    assert said == []


def _engine_way(student, objective, x, teacher, labels, epochs):
    """What the engine does: set_epoch every epoch, backward through the recipe."""
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    for epoch in range(epochs):
        objective.set_epoch(epoch)
        terms = objective(student(x), teacher, labels=labels)
        optimizer.zero_grad()
        objective.backward(terms, student)
        optimizer.step()


def _step_way(student, objective, x, teacher, labels, epochs):
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    for epoch in range(epochs):
        objective.step(student(x), teacher, model=student, epoch=epoch, optimizer=optimizer,
                       labels=labels)


def _old_way(student, objective, x, teacher, labels, epochs):
    """The README's loop before step: the recipe never hears of the epoch or the step."""
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    for _ in range(epochs):
        terms = objective(student(x), teacher, labels=labels)
        optimizer.zero_grad()
        sum(terms.values()).backward()
        optimizer.step()


def _epoch_but_plain_backward(student, objective, x, teacher, labels, epochs):
    """The epoch given, the loss back-propagated by hand: right for schedules alone."""
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    for epoch in range(epochs):
        objective.set_epoch(epoch)
        terms = objective(student(x), teacher, labels=labels)
        optimizer.zero_grad()
        sum(terms.values()).backward()
        optimizer.step()


def _trained(way, make_student, make_objective, *data, epochs=3):
    student, objective = make_student(), make_objective()
    _, said = _recorded(lambda: way(student, objective, *data, epochs))
    return [p.detach().clone() for p in student.parameters()], said


def _same(a, b) -> bool:
    return all(torch.allclose(p, q, rtol=1e-5, atol=1e-7) for p, q in zip(a, b))


def test_step_trains_a_scheduled_recipe_as_the_engine_does_and_the_old_loop_warns_once():
    data = _data()
    objective = lambda: dglkd.compose(SCHEDULED)  # noqa: E731
    engine, said_engine = _trained(_engine_way, _student, objective, *data)
    step, said_step = _trained(_step_way, _student, objective, *data)
    old, said_old = _trained(_old_way, _student, objective, *data)
    by_hand, said_by_hand = _trained(_epoch_but_plain_backward, _student, objective, *data)
    assert _same(step, engine) and _same(by_hand, engine) and not _same(old, engine)
    assert said_engine == said_step == said_by_hand == []
    assert len(said_old) == 1
    assert "kd (schedule)" in str(said_old[0]) and "objective.step(" in str(said_old[0])


def test_step_applies_mhgds_clip_as_the_engine_does_and_the_old_loop_warns_once():
    teacher, student, images, method = mhgd_setup(seed=2, clip_ramp_start=1)
    method.end_pretraining()
    with torch.no_grad():
        teacher_knowledge = teacher(images)
    labels = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(0))
    data = (images, teacher_knowledge, labels)
    make_student = lambda: copy.deepcopy(student)  # noqa: E731
    make_objective = lambda: dglkd.compose(ce=1.0, mhgd=copy.deepcopy(method))  # noqa: E731
    engine, said_engine = _trained(_engine_way, make_student, make_objective, *data)
    step, said_step = _trained(_step_way, make_student, make_objective, *data)
    old, said_old = _trained(_old_way, make_student, make_objective, *data)
    by_hand, said_by_hand = _trained(_epoch_but_plain_backward, make_student, make_objective,
                                     *data)
    assert _same(step, engine)
    # unclipped: MHGD's gradient exceeds the limit here
    assert not _same(old, engine) and not _same(by_hand, engine)
    assert said_engine == said_step == []
    for said in (said_old, said_by_hand):
        assert len(said) == 1 and "mhgd (gradient rule)" in str(said[0])


def test_recipes_without_schedules_or_rules_never_warn():
    data = _data()
    for terms in ({"ce": 1.0, "kd": 1.0}, {"glnn": 1.0}, {"ce": 1.0, "kd": {"weight": 0.5}}):
        _, said = _trained(_old_way, _student, lambda: dglkd.compose(terms), *data)
        assert said == [], terms
    teacher, student, images, method = mhgd_setup(clip="none")  # MHGD without its rule
    with torch.no_grad():
        teacher_knowledge = teacher(images)
    _, said = _trained(_old_way, lambda: student, lambda: dglkd.compose(ce=1.0, mhgd=method),
                       images, teacher_knowledge, torch.zeros(16, dtype=torch.long))
    assert said == []

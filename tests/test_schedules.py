"""Per-member weight schedules of a recipe, and the gradient rules of Recipe.backward."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dglkd
from dglkd.errors import DglkdError
from dglkd.methods import Knowledge
from dglkd.methods.base import DistillMethod, MethodParams, register_method
from dglkd.methods.recipe import Schedule, check_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_schedule_factors_match_hand_values():
    linear = Schedule(kind="linear", start=2, length=4)
    assert [linear.factor(e) for e in range(8)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    sig = Schedule(kind="sigmoid", start=3)
    assert [sig.factor(e) for e in (0, 3, 5)] == pytest.approx(
        [_sigmoid(-3), 0.5, _sigmoid(2)])
    off = Schedule(until=30)  # LSP's authors: the first 30 epochs only
    assert off.factor(0) == off.factor(29) == 1 and off.factor(30) == off.factor(499) == 0
    ramp_off = Schedule(kind="linear", length=2, until=3)
    assert [ramp_off.factor(e) for e in range(5)] == [0.5, 1, 1, 0, 0]


def _knowledge(n: int = 6, seed: int = 0) -> tuple[Knowledge, Knowledge, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    return Knowledge(s), Knowledge(t), torch.arange(n) % 3


def test_recipe_weights_follow_the_schedule_per_epoch():
    recipe = dglkd.compose(ce=1.0, kd={"weight": 2.0, "temperature": 1.0,
                                       "schedule": {"kind": "linear", "length": 4}})
    s, t, y = _knowledge()
    unscheduled = dglkd.compose(kd={"temperature": 1.0})(s, t)["kd"]
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (9, 1.0)]:
        recipe.set_epoch(epoch)
        assert recipe.current_weights() == {"ce": 1.0, "kd": 2.0 * factor}
        assert recipe.term_weights()["kd"] == 2.0 * factor
        terms = recipe(s, t, labels=y)
        assert terms["kd"].item() == pytest.approx(2.0 * factor * unscheduled.item())
    assert "kd: linear from epoch 0 over 4" in recipe.formula()


class _Counting(DistillMethod):
    """A stand-in method that counts its calls (to see that switched-off terms cost
    nothing)."""

    Params = MethodParams
    calls = 0

    def loss_terms(self, batch):
        type(self).calls += 1
        return {self.name: batch.student.logits.pow(2).mean()}


register_method("_counting_test")(_Counting)


def test_until_switches_the_member_off_and_skips_its_computation():
    recipe = dglkd.compose(ce=1.0, count={"name": "_counting_test",
                                          "schedule": {"until": 2}})
    s, t, y = _knowledge()
    seen = []
    for epoch in range(4):
        recipe.set_epoch(epoch)
        before = _Counting.calls
        terms = recipe(s, t, labels=y)
        seen.append((set(terms), _Counting.calls - before))
    assert seen == [({"ce", "count._counting_test"}, 1)] * 2 + [({"ce"}, 0)] * 2
    assert recipe.current_weights()["count"] == 0.0
    assert recipe.formula().startswith("loss = 1*ce  [count:")


def test_yaml_schedule_is_validated_with_one_line_errors():
    spec = check_recipe({"terms": {"ce": 1.0, "kd": {"schedule": {"kind": "sigmoid",
                                                                  "start": 5}}}})
    assert spec["kd"].schedule.kind == "sigmoid" and "schedule" not in spec["kd"].params
    bad = [({"kind": "cosine"}, "method.terms.kd.schedule.kind"),
           ({"until": 0}, "method.terms.kd.schedule.until"),
           ({"length": 0}, "method.terms.kd.schedule.length"),
           ({"when": 3}, "method.terms.kd.schedule.when: unknown key"),
           (5, "method.terms.kd.schedule: expected a mapping")]
    for schedule, message in bad:
        with pytest.raises(DglkdError, match=message.replace(".", r"\.")) as info:
            check_recipe({"terms": {"kd": {"schedule": schedule}}})
        assert "\n" not in str(info.value)


# -- gradient rules in Recipe.backward -----------------------------------------------------
class _Halving(DistillMethod):
    """Its term's gradient is halved by a rule, per parameter: a minimal GradientRule."""

    Params = MethodParams
    needs_teacher = False

    def loss_terms(self, batch):
        return {self.name: batch.student.logits.sum()}

    def has_gradient_rule(self) -> bool:
        return True

    def clip_gradient(self, own, other, epoch):
        return [None if g is None else g * 0.5 for g in own]


register_method("_halving_test")(_Halving)


def test_backward_applies_a_member_rule_to_its_own_gradient_only():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    x = torch.randn(4, 2)
    recipe = dglkd.compose(ce=1.0, halved={"name": "_halving_test", "weight": 3.0})
    labels = torch.tensor([0, 1, 2, 0])

    def grads(rule: bool) -> list[torch.Tensor]:
        model.zero_grad()
        terms = recipe(Knowledge(model(x)), None, labels=labels)
        if rule:
            recipe.backward(terms, model)
        else:
            (terms["ce"] + 0.5 * terms["halved._halving_test"]).backward()  # what the rule amounts to
        return [p.grad.clone() for p in model.parameters()]

    for got, want in zip(grads(True), grads(False)):
        assert torch.allclose(got, want, atol=1e-6)

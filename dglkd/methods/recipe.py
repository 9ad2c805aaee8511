"""Recipes: a training objective as a weighted sum of methods.

``dglkd.compose(glnn=1.0, hkd={"weight": 0.1, "relation": "native"}, context=ctx)`` and the
YAML ``method: {terms: {glnn: 1.0, hkd: {weight: 0.1, relation: native}}}`` build the same
:class:`Recipe`: each method contributes only its own terms, every term is logged under
``label`` (or ``label.term`` for a method with several), and ``str(recipe)`` prints the
whole formula. A method named alone (``method: {name: kd, temperature: 2}``) stands for
its paper's recipe (KD: ``ce + kd``), with the constants given applying to that method.

A member may carry a ``schedule`` (``{kind: constant|linear|sigmoid, start, length,
until}``, see :class:`Schedule`): its weight is multiplied by the schedule's factor of the
current epoch, which the engine sets through :meth:`Recipe.set_epoch`. A member may also
shape its own gradient (:class:`GradientRule`, MHGD's clip): :meth:`Recipe.backward` then
back-propagates that member's terms and the others' separately into the student.

In a user's own loop, :meth:`Recipe.step` does both in one call per step. A recipe with
schedules or gradient rules that is stepped another way (``sum(terms.values()).backward()``
never tells it the epoch nor lets it shape a gradient) says so once
(:class:`RecipeStepWarning`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Protocol, Sequence, runtime_checkable

import pydantic
import torch
from torch import Tensor, nn

from dglkd.errors import DglkdError, describe_validation_error
from dglkd.methods.base import (
    METHODS,
    DistillBatch,
    DistillMethod,
    Knowledge,
    MethodContext,
    as_knowledge,
    parse_params,
)


class Schedule(pydantic.BaseModel):
    """A member's weight factor per training epoch (epochs count from 0).

    * ``constant``: 1;
    * ``linear``: 0 before ``start``, then ``(epoch − start + 1) / length`` up to 1, i.e.
      a ramp that reaches full weight at epoch ``start + length − 1``;
    * ``sigmoid``: ``sigmoid((epoch − start) / length)``, with ``length: 1`` the ramp
      sigmoid(epoch − init_epoch) of the MHGD authors;

    and 0 from epoch ``until`` on, whatever the kind (LSP's authors distil for the first
    30 of 500 epochs: ``{until: 30}``). A factor of 0 skips the member's computation.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    kind: Literal["constant", "linear", "sigmoid"] = pydantic.Field(
        "constant", description="shape of the ramp: constant, linear or sigmoid")
    start: int = pydantic.Field(0, ge=0, le=1_000_000,
                                description="epoch at which the ramp starts (its centre "
                                            "for sigmoid)")
    length: int = pydantic.Field(1, ge=1, le=1_000_000,
                                 description="epochs of the linear ramp; the sigmoid's "
                                             "width in epochs")
    until: Optional[int] = pydantic.Field(None, ge=1, le=1_000_000,
                                          description="first epoch with factor 0 (the "
                                                      "member is off from then on)")

    def factor(self, epoch: int) -> float:
        if self.until is not None and epoch >= self.until:
            return 0.0
        if self.kind == "linear":
            return min(1.0, max(0.0, (epoch - self.start + 1) / self.length))
        if self.kind == "sigmoid":
            return 1.0 / (1.0 + math.exp(-(epoch - self.start) / self.length))
        return 1.0

    def describe(self) -> str:
        ramp = {"constant": "",
                "linear": f"linear from epoch {self.start} over {self.length}",
                "sigmoid": f"sigmoid((epoch-{self.start})/{self.length})"}[self.kind]
        off = f"until epoch {self.until}" if self.until is not None else ""
        return ", ".join(part for part in (ramp, off) if part) or "constant"


def parse_schedule(raw: Any, key: str) -> Schedule | None:
    """A member's ``schedule`` mapping, validated; errors name ``key``."""
    if raw is None or isinstance(raw, Schedule):
        return raw
    if not isinstance(raw, Mapping):
        raise DglkdError(f"{key}: expected a mapping {{kind, start, length, until}}, got {raw!r}")
    try:
        return Schedule(**raw)
    except pydantic.ValidationError as exc:
        raise DglkdError(describe_validation_error(exc, key, list(Schedule.model_fields))) from None


@runtime_checkable
class GradientRule(Protocol):
    """What a member implements to shape the gradient its own terms send to the student
    (MHGD's clip). ``own`` and ``other`` are, per student parameter (in
    ``model.parameters()`` order), the gradient of the member's terms and of every other
    term (``None`` where a side does not reach the parameter); the rule returns the
    member's gradient to use. ``has_gradient_rule()`` may switch the rule off (config)."""

    def has_gradient_rule(self) -> bool: ...

    def clip_gradient(self, own: Sequence[Tensor | None], other: Sequence[Tensor | None],
                      epoch: int) -> list[Tensor | None]: ...


@dataclass(frozen=True)
class TermSpec:
    """One member of a recipe: a registered method, its weight, its constants and an
    optional weight schedule."""

    method: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    schedule: Schedule | None = None

    def as_config(self) -> dict[str, Any]:
        extra = {"schedule": self.schedule.model_dump()} if self.schedule else {}
        return {"name": self.method, "weight": self.weight, **self.params, **extra}


def _member_spec(label: str, value: Any, key: str) -> TermSpec:
    if isinstance(value, bool) or not isinstance(value, (int, float, Mapping)):
        raise DglkdError(f"{key}.{label}: expected a weight or a mapping of the method's "
                         f"constants with an optional weight and name, got {value!r}")
    if not isinstance(value, Mapping):
        return TermSpec(label, float(value))
    params = dict(value)
    name = str(params.pop("name", label))
    weight = params.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise DglkdError(f"{key}.{label}.weight: expected a number, got {weight!r}")
    schedule = parse_schedule(params.pop("schedule", None), f"{key}.{label}.schedule")
    return TermSpec(name, float(weight), params, schedule)


def recipe_spec(raw: Mapping[str, Any], key: str = "method") -> dict[str, TermSpec]:
    """Labelled members from a config's ``method`` (or ``compare.X``) section:
    ``{terms: {label: weight | {name?, weight?, **constants}}}``, or the shorthand
    ``{name: X, **constants}`` for method X's paper recipe."""
    raw = dict(raw)
    if "terms" in raw:
        terms = raw.pop("terms")
        if raw:
            raise DglkdError(f"{key}: with 'terms', give each method's constants inside its "
                             f"entry; unexpected: {', '.join(map(str, raw))}")
        if not isinstance(terms, Mapping) or not terms:
            raise DglkdError(f"{key}.terms: expected a mapping of method labels to weights, "
                             f"e.g. {{ce: 1.0, kd: 1.0}}; got {terms!r}")
        return {str(label): _member_spec(str(label), value, f"{key}.terms")
                for label, value in terms.items()}
    if "name" not in raw:
        raise DglkdError(f"{key}: give 'name' (one method with its paper recipe) or 'terms' "
                         "(a weighted sum of methods)")
    name = str(raw.pop("name"))
    members = METHODS.get(name, key=f"{key}.name").recipe()
    return {label: TermSpec(label, weight, raw if label == name else {})
            for label, weight in members.items()}


def check_recipe(raw: Mapping[str, Any], key: str = "method") -> dict[str, TermSpec]:
    """The recipe of a config section, every member's method name and constants validated
    (no modules are built); errors name the key as the user wrote it."""
    spec = recipe_spec(raw, key)
    for label, member in spec.items():
        where = f"{key}.terms.{label}" if "terms" in raw else key
        parse_params(member.method, member.params, key=where)
    return spec


def qualified(label: str, term: str) -> str:
    return label if term == label else f"{label}.{term}"


class RecipeStepWarning(UserWarning):
    """A recipe whose members need the epoch (schedules, ramps) or shape their own gradient
    (MHGD's clip) was trained without :meth:`Recipe.step` (or ``set_epoch`` and
    ``backward``): what those members do was silently skipped."""


class Recipe(nn.Module):
    """A weighted sum of methods, called like one method.

    ``recipe(student, teacher, labels=..., graph=..., index=...)`` returns every member's
    weighted terms, keyed ``label`` or ``label.term``; ``sum(terms.values())`` is the loss,
    and :meth:`backward` back-propagates it (honouring the members' gradient rules).
    ``schedules`` maps labels to :class:`Schedule` s: a member's weight is its base weight
    times the factor of the epoch last given to :meth:`set_epoch` (epoch 0 until then).
    In a user's own loop, :meth:`step` is the one call per training step.
    """

    def __init__(self, members: Mapping[str, tuple[float, DistillMethod]],
                 schedules: Mapping[str, Schedule | None] | None = None) -> None:
        super().__init__()
        if not members:
            raise DglkdError("a recipe needs at least one method")
        self.members = nn.ModuleDict({label: method for label, (_w, method) in members.items()})
        self.weights = {label: float(weight) for label, (weight, _m) in members.items()}
        unknown = set(schedules or {}) - set(self.weights)
        if unknown:
            raise DglkdError(f"schedules: no member labelled {', '.join(sorted(unknown))}; "
                             f"members: {', '.join(self.weights)}")
        self.schedules = {label: s for label, s in (schedules or {}).items() if s is not None}
        self.epoch = 0
        self.factors = {label: 1.0 for label in self.weights}
        self._apply_epoch(0)
        # which member produced each key of the last forward (for the gradient rules)
        self._owners: dict[str, str] = {}
        # How the recipe is being stepped: whether anyone told it an epoch, whether a
        # gradient is being taken by backward(), and whether the warning was given.
        self._epoch_given = False
        self._in_backward = False
        self._step_warned = False

    # -- the loss ---------------------------------------------------------------------
    def forward(self, student: Knowledge | Tensor, teacher: Knowledge | Tensor | None = None,
                rerun: Any = None, **batch: Any) -> dict[str, Tensor]:
        """Every member's weighted terms. ``rerun`` (a :class:`dglkd.methods.adv.Rerun`:
        the batch's input features and the student run on others) goes to the members
        that re-run the student on other inputs (``uses_rerun``: ``adv_aug``, ``mixup``)."""
        teacher = as_knowledge(teacher, "teacher")
        teacher = teacher.detach() if teacher is not None else None
        terms: dict[str, Tensor] = {}
        self._owners = {}
        for label, method in self.members.items():
            weight = self.current_weight(label)
            if not weight:
                continue  # a switched-off member costs nothing
            if getattr(method, "uses_rerun", False):
                method.bind_rerun(rerun)
            for term, value in method(student, teacher, **batch).items():
                key = qualified(label, term)
                terms[key] = weight * value
                self._owners[key] = label
        self._watch_stepping(terms)
        return terms

    # -- how a user's loop steps it ---------------------------------------------------
    def step(self, student: Knowledge | Tensor, teacher: Knowledge | Tensor | None = None, *,
             model: nn.Module, epoch: int,
             optimizer: torch.optim.Optimizer | None = None,
             **batch: Any) -> dict[str, Tensor]:
        """One training step of a user's own loop: tells the members the epoch
        (schedules, ramps), computes the weighted terms, back-propagates them into
        ``model`` (the student) and the members' own modules with the members' gradient
        rules (MHGD's clip) and, given an ``optimizer``, zeroes its gradients before and
        steps it after (leave it out to do both yourself, e.g. around a gradient
        scaler). ``batch`` is what the call of the recipe takes (``labels``,
        ``label_mask``, ``graph``, ``index``, ...). Returns the terms, detached:
        ``sum(terms.values())`` is the loss of this step."""
        if epoch != self.epoch or not self._epoch_given:
            self.set_epoch(epoch)
        terms = self(student, teacher, **batch)
        if optimizer is not None:
            optimizer.zero_grad()
        self.backward(terms, model)
        if optimizer is not None:
            optimizer.step()
        return {key: value.detach() for key, value in terms.items()}

    def _stepping_needs(self) -> dict[str, str]:
        """The members that need the recipe's own step, and what for: a schedule, an
        epoch-dependent method, a gradient rule (MHGD's clip, whose ramp reads the
        epoch too)."""
        needs = {}
        for label, method in self.members.items():
            what = ["schedule"] if label in self.schedules else \
                ["epoch"] if type(method).set_epoch is not DistillMethod.set_epoch else []
            if isinstance(method, GradientRule) and method.has_gradient_rule():
                what.append("gradient rule")
            if what:
                needs[label] = " and ".join(what)
        return needs

    def _watch_stepping(self, terms: Mapping[str, Tensor]) -> None:
        """Warn once when a recipe whose members need the epoch computes training terms
        before any epoch was given, or when a ruled member's terms are back-propagated
        outside :meth:`backward` (a hook on them sees the gradient pass)."""
        if self._step_warned or not any(v.requires_grad for v in terms.values()):
            return
        needs = self._stepping_needs()
        if needs and not self._epoch_given:
            self._warn_stepping(needs)
            return
        ruled = set(self._ruled(terms))
        for key, value in terms.items():
            if self._owners.get(key) in ruled and value.requires_grad:
                value.register_hook(lambda grad: self._outside_backward(needs))

    def _outside_backward(self, needs: dict[str, str]) -> None:
        if not self._in_backward:
            self._warn_stepping(needs)

    def _warn_stepping(self, needs: dict[str, str]) -> None:
        if self._step_warned:
            return
        self._step_warned = True
        members = ", ".join(f"{label} ({what})" for label, what in needs.items())
        verb = "needs" if len(needs) == 1 else "need"
        warnings.warn(
            f"recipe {self.name}: {members} {verb} the recipe's own training step: call "
            "objective.step(student_knowledge, teacher_knowledge, model=student, "
            "epoch=epoch, optimizer=optimizer, **batch) once per step (or "
            "objective.set_epoch(epoch) every epoch and objective.backward(terms, student) "
            "instead of loss.backward()); stepped otherwise, schedules stay at epoch 0 and "
            "gradient rules are skipped", RecipeStepWarning, stacklevel=3)

    def _ruled(self, terms: Mapping[str, Tensor]) -> list[str]:
        """Labels of the members with an active gradient rule that produced terms."""
        present = {self._owners.get(key) for key in terms}
        return [label for label, m in self.members.items()
                if label in present and isinstance(m, GradientRule) and m.has_gradient_rule()]

    def backward(self, terms: dict[str, Tensor], model: nn.Module) -> Tensor:
        """Back-propagate the summed terms into ``model`` and the members' own modules;
        returns the total.

        Without gradient rules this is ``sum(terms).backward()``. With them, the gradient
        of each ruled member's terms and that of every other term are taken separately
        with respect to ``model``'s parameters, the member's rule reshapes its own part,
        and the sum is accumulated into ``.grad``; the members' own modules (projections,
        channel maps) get the plain gradient of the total.
        """
        self._in_backward = True
        try:
            return self._backward(terms, model)
        finally:
            self._in_backward = False

    def _backward(self, terms: dict[str, Tensor], model: nn.Module) -> Tensor:
        total = sum(terms.values())
        ruled = self._ruled(terms)
        if not ruled:
            total.backward()
            return total.detach()
        params = [p for p in model.parameters() if p.requires_grad]
        own = {label: sum(v for k, v in terms.items() if self._owners.get(k) == label)
               for label in ruled}
        rest = [v for k, v in terms.items() if self._owners.get(k) not in own]
        other = _grads(sum(rest) if rest else None, params)
        grads = list(other)
        for label in ruled:
            shaped = self.members[label].clip_gradient(_grads(own[label], params), other,
                                                       self.epoch)
            grads = [_add(g, s) for g, s in zip(grads, shaped)]
        model_ids = {id(p) for p in model.parameters()}
        extra = [p for p in self.parameters() if p.requires_grad and id(p) not in model_ids]
        if extra and total.requires_grad:
            # accumulate into the members' own modules only (not the student's .grad)
            total.backward(inputs=extra)
        for param, grad in zip(params, grads):
            if grad is None:
                continue
            param.grad = grad.detach() if param.grad is None else param.grad + grad.detach()
        return total.detach()

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine at the start of every training epoch (and by
        :meth:`step`): updates the schedules' factors and tells every member."""
        self._epoch_given = True
        self._apply_epoch(epoch)

    def _apply_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.factors = {label: (self.schedules[label].factor(self.epoch)
                                if label in self.schedules else 1.0)
                        for label in self.weights}
        for method in self.members.values():
            method.set_epoch(epoch)

    def current_weight(self, label: str) -> float:
        return self.weights[label] * self.factors[label]

    def current_weights(self) -> dict[str, float]:
        """Every member's weight at the current epoch (base weight × schedule factor),
        keyed by label: what the engine logs per epoch."""
        return {label: self.current_weight(label) for label in self.weights}

    def term_weights(self) -> dict[str, float]:
        """Every term's weight at the current epoch (scheduled)."""
        return {qualified(label, term): self.current_weight(label) * inner
                for label, method in self.members.items()
                for term, inner in method.term_weights().items()}

    def formula(self) -> str:
        """The loss at the current epoch, with each schedule named after the formula."""
        terms = [f"{weight:g}*{term}" for term, weight in self.term_weights().items() if weight]
        formula = "loss = " + (" + ".join(terms) or "0")
        notes = [f"{label}: {s.describe()} (base weight {self.weights[label]:g})"
                 for label, s in self.schedules.items()]
        return formula + (f"  [{'; '.join(notes)}]" if notes else "")

    # -- what the engine asks of a method ---------------------------------------------
    @property
    def name(self) -> str:
        return "+".join(self.members)

    @property
    def needs_rerun(self) -> bool:
        """Whether the engine must pass ``rerun=`` (a member re-runs the student)."""
        return any(getattr(m, "uses_rerun", False) for m in self.members.values())

    @property
    def needs_teacher(self) -> bool:
        return any(m.needs_teacher for label, m in self.members.items() if self.weights[label])

    def reads_graph(self) -> bool:
        """Whether a weighted member reads the batch's graph (the engine builds it then)."""
        return any(m.reads_graph() for label, m in self.members.items() if self.weights[label])

    def required_features(self) -> tuple[list[str], list[str]]:
        student: dict[str, None] = {}
        teacher: dict[str, None] = {}
        for method in self.members.values():
            s, t = method.required_features()
            student.update(dict.fromkeys(s))
            teacher.update(dict.fromkeys(t))
        return list(student), list(teacher)

    def pretrain_epochs(self) -> int:
        return max(m.pretrain_epochs() for m in self.members.values())

    def pretrain_terms(self, teacher: Knowledge, index: Tensor | None = None) -> dict[str, Tensor]:
        return {qualified(label, term): value
                for label, m in self.members.items() if m.pretrain_epochs()
                for term, value in m.pretrain_terms(teacher, index).items()}

    def end_pretraining(self) -> None:
        for method in self.members.values():
            method.end_pretraining()

    def embeddings(self, batch: DistillBatch) -> dict[str, Tensor]:
        return {qualified(label, name): value for label, m in self.members.items()
                for name, value in m.embeddings(batch).items()}

    def constants(self) -> dict[str, Any]:
        """Every member's method, weight and constants, for logs and result tables."""
        return {label: {"name": m.name, "weight": self.weights[label], **m.constants(),
                        **({"schedule": self.schedules[label].model_dump()}
                           if label in self.schedules else {})}
                for label, m in self.members.items()}

    def pretrain_optimizer(self) -> dict[str, Any]:
        """Optimizer settings (``TrainConfig`` keys) the members ask for in their first
        stage (MHGD: the authors' SGD); empty to use the engine's own."""
        settings: dict[str, Any] = {}
        for m in self.members.values():
            if m.pretrain_epochs() and hasattr(m, "pretrain_optimizer"):
                settings.update(m.pretrain_optimizer())
        return settings

    def extra_repr(self) -> str:
        return self.formula()

    def __str__(self) -> str:
        return f"{self.name}: {self.formula()}"


def _grads(loss: Tensor | None, params: list[Tensor]) -> list[Tensor | None]:
    """d loss / d param for every param (``None`` where it does not reach one)."""
    if loss is None or not isinstance(loss, Tensor) or not loss.requires_grad:
        return [None] * len(params)
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def build_recipe(spec: Mapping[str, TermSpec], context: MethodContext,
                 key: str = "method") -> Recipe:
    """Build every member of ``spec`` on one context."""
    members = {}
    for label, member in spec.items():
        cls = METHODS.get(member.method, key=f"{key}.terms.{label}.name")
        params = parse_params(member.method, member.params, key=key)
        try:
            members[label] = (member.weight, cls(params, context))
        except DglkdError as exc:  # e.g. a feature the networks do not have: name the term
            raise DglkdError(f"{key} ({label}): {exc}") from None
    return Recipe(members, {label: m.schedule for label, m in spec.items()})


def compose(terms: Mapping[str, Any] | None = None,
            context: MethodContext | int | None = None, **kw_terms: Any) -> Recipe:
    """A recipe from labelled members: ``compose(glnn=1.0, hkd={"weight": 0.1,
    "relation": "native"}, context=ctx)``.

    A member is a weight (the method registered under the label, default constants), a
    mapping ``{name?, weight?, schedule?, **constants}`` (as in YAML), a built
    ``DistillMethod`` (weight 1), a ``(weight, method)`` pair or a ``(weight, method,
    schedule)`` triple. ``context`` (see ``dglkd.context_for``) is
    needed by methods that build modules; a number of classes is enough for the others.
    """
    if context is None or isinstance(context, int):
        context = MethodContext(num_classes=int(context or 0))
    members: dict[str, tuple[float, DistillMethod]] = {}
    schedules: dict[str, Schedule | None] = {}
    for label, value in {**(terms or {}), **kw_terms}.items():
        if isinstance(value, DistillMethod):
            value = (1.0, value)
        if (isinstance(value, tuple) and len(value) in (2, 3)
                and isinstance(value[1], DistillMethod)):
            members[label] = (float(value[0]), value[1])
            if len(value) == 3:
                schedules[label] = parse_schedule(value[2], f"compose.{label}.schedule")
            continue
        member = _member_spec(label, value, "compose")
        members[label] = (member.weight, build_recipe({label: member}, context,
                                                      key="compose").members[label])
        schedules[label] = member.schedule
    return Recipe(members, schedules)


__all__ = ["GradientRule", "Recipe", "RecipeStepWarning", "Schedule", "TermSpec", "build_recipe", "check_recipe", "compose", "recipe_spec"]

"""The one interface every distillation method implements.

A method is an ``nn.Module`` that receives what the teacher and the student know about a
set of instances (nodes of a graph, or images of a batch), plus labels and the relational
graph among the instances, and returns a dict of *weighted* named loss terms. The total
loss is ``sum(terms.values())``; ``str(method)`` prints the formula. A method owns its
extra trainable modules (projections, embeddings, memory banks): the optimizer gets
``method.parameters()`` next to the student's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import pydantic
from torch import Tensor, nn

from dglkd.errors import DglkdError, describe_validation_error
from dglkd.registry import Registry


@dataclass
class Knowledge:
    """What one network knows about a set of instances: logits and named hidden features."""

    logits: Tensor
    feats: dict[str, Tensor] = field(default_factory=dict)

    def feat(self, name: str) -> Tensor:
        if name == "logits":
            return self.logits
        if name not in self.feats:
            raise DglkdError(
                f"feature {name!r} was not captured; captured: {sorted(self.feats) or 'none'}"
            )
        return self.feats[name]

    def detach(self) -> "Knowledge":
        return Knowledge(self.logits.detach(), {k: v.detach() for k, v in self.feats.items()})


@dataclass
class DistillBatch:
    """Everything a method may look at for one step.

    ``label_mask`` marks instances whose labels may be used (training nodes);
    ``distill_mask`` marks instances whose teacher knowledge may be used (all nodes
    transductively, observed nodes inductively). ``None`` means every instance.
    ``index`` holds the instances' dataset indices (memory banks need them).
    """

    student: Knowledge
    teacher: Knowledge | None
    labels: Tensor | None = None
    label_mask: Tensor | None = None
    distill_mask: Tensor | None = None
    graph: Any = None
    index: Tensor | None = None

    def labelled(self) -> tuple[Tensor, Tensor]:
        """Student logits and labels of the instances whose labels may be used."""
        if self.labels is None:
            raise DglkdError("this method needs labels, but none were given")
        logits, labels = self.student.logits, self.labels
        if self.label_mask is not None:
            logits, labels = logits[self.label_mask], labels[self.label_mask]
        return logits, labels

    def distill_rows(self, tensor: Tensor) -> Tensor:
        return tensor if self.distill_mask is None else tensor[self.distill_mask]


@dataclass
class MethodContext:
    """Facts about the data and the two networks that a method may need to build modules.

    ``instance_labels`` holds the label of every training instance (by dataset index, -1
    where unknown): contrastive methods draw negatives from other classes with it.
    """

    num_classes: int
    num_instances: int = 0
    student_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    teacher_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    instance_labels: Tensor | None = None
    probe: Callable[[str, str], tuple[int, ...]] | None = None

    def shape(self, side: str, name: str) -> tuple[int, ...]:
        """Per-instance shape of a named feature of the ``student`` or ``teacher``
        (found by ``probe(side, name)``, a forward pass, when not given up front)."""
        shapes = self.student_shapes if side == "student" else self.teacher_shapes
        if name not in shapes and self.probe is not None:
            shapes[name] = tuple(self.probe(side, name))
        if name not in shapes:
            raise DglkdError(f"{side} feature {name!r} unknown; available: {sorted(shapes)}")
        return shapes[name]

    def dim(self, side: str, name: str) -> int:
        """Width of a named feature once flattened to one vector per instance."""
        return math.prod(self.shape(side, name))


class MethodParams(pydantic.BaseModel):
    """Base of every method's constants; each ``*_weight`` field weights the term of that name."""

    model_config = pydantic.ConfigDict(extra="forbid")


class DistillMethod(nn.Module):
    """Base class: subclasses set ``Params`` and implement ``loss_terms``."""

    Params: ClassVar[type[MethodParams]] = MethodParams
    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True

    def __init__(self, params: MethodParams, context: MethodContext) -> None:
        super().__init__()
        self.params = params
        self.context = context

    # -- what a subclass provides -------------------------------------------------
    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        raise NotImplementedError

    def required_features(self) -> tuple[list[str], list[str]]:
        """Names of the (student, teacher) hidden features this method reads."""
        return [], []

    def pretrain_epochs(self) -> int:
        """Epochs of a first stage that trains the method's own modules on the teacher alone
        (MHGD); 0 for methods without one. The engine runs that stage before distilling."""
        return 0

    def pretrain_terms(self, teacher: Knowledge, index: Tensor | None = None) -> dict[str, Tensor]:
        """Loss terms of the first stage, from the teacher's knowledge of one batch."""
        raise NotImplementedError(f"{self.name} has no pretraining stage")

    def end_pretraining(self) -> None:
        """Called once after the first stage (e.g. to freeze the modules it trained)."""

    def embeddings(self, batch: DistillBatch) -> dict[str, Tensor]:
        """Named per-instance embeddings worth a look in TensorBoard's projector (HKD's
        holistic embeddings, say); empty for methods without any."""
        return {}

    # -- shared behaviour ----------------------------------------------------------
    def weight(self, term: str) -> float:
        return float(getattr(self.params, f"{term}_weight", 1.0))

    def forward(
        self,
        student: Knowledge,
        teacher: Knowledge | None = None,
        *,
        labels: Tensor | None = None,
        label_mask: Tensor | None = None,
        distill_mask: Tensor | None = None,
        graph: Any = None,
        index: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if teacher is None and self.needs_teacher:
            raise DglkdError(f"method {self.name!r} needs the teacher's knowledge")
        teacher = teacher.detach() if teacher is not None else None
        batch = DistillBatch(student, teacher, labels, label_mask, distill_mask, graph, index)
        return {name: self.weight(name) * value for name, value in self.loss_terms(batch).items()}

    def formula(self) -> str:
        terms = [f"{self.weight(t)}*{t}" for t in self.term_names()]
        return "loss = " + " + ".join(terms)

    def term_names(self) -> list[str]:
        fields = type(self.params).model_fields
        names = [n[: -len("_weight")] for n in fields if n.endswith("_weight")]
        return [n for n in names if self.weight(n) != 0.0]

    def extra_repr(self) -> str:
        return self.formula()

    def __str__(self) -> str:
        return f"{self.name}: {self.formula()}"


METHODS: Registry[type[DistillMethod]] = Registry("method")


def register_method(name: str):
    """Class decorator: make a method available under ``name`` in configs and the API."""

    def decorate(cls: type[DistillMethod]) -> type[DistillMethod]:
        cls.name = name
        return METHODS.register(name)(cls)

    return decorate


def parse_params(name: str, params: dict[str, Any], key: str = "method") -> MethodParams:
    cls = METHODS.get(name, key=f"{key}.name")
    try:
        return cls.Params(**params)
    except pydantic.ValidationError as exc:
        allowed = ["name", *cls.Params.model_fields]
        raise DglkdError(describe_validation_error(exc, key, allowed)) from None


def build_method(
    name: str, context: MethodContext | int | None = None, **params: Any
) -> DistillMethod:
    """Build a registered method by name: ``build_method("kd", num_classes, temperature=4)``."""
    if context is None or isinstance(context, int):
        context = MethodContext(num_classes=int(context or 0))
    return METHODS.get(name)(parse_params(name, params), context)


def require_graph(batch: DistillBatch, method: str) -> Any:
    if batch.graph is None:
        raise DglkdError(f"method {method!r} needs a graph over the instances; none was given")
    return batch.graph


__all__ = [
    "Knowledge",
    "DistillBatch",
    "MethodContext",
    "MethodParams",
    "DistillMethod",
    "METHODS",
    "register_method",
    "build_method",
]

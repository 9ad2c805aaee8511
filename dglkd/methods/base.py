"""The one interface every distillation method implements.

A method is an ``nn.Module`` that receives what the teacher and the student know about a
set of instances (nodes of a graph, or images of a batch), plus labels and the relational
graph among the instances, and returns a dict of *weighted* named loss terms: its own
terms only. CE and KD are methods like any other; a training objective is a weighted sum
of methods, a :class:`~dglkd.methods.recipe.Recipe` (``dglkd.compose``). A method owns its
extra trainable modules (projections, embeddings, memory banks): the optimizer gets
``method.parameters()`` next to the student's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import pydantic
import torch
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
                f"feature {name!r} was not captured; captured: {sorted(self.feats) or 'none'} "
                "(capture it with dglkd.capture(model, names, *inputs))"
            )
        return self.feats[name]

    def detach(self) -> "Knowledge":
        return Knowledge(self.logits.detach(), {k: v.detach() for k, v in self.feats.items()})

    def rows(self, index: Tensor) -> "Knowledge":
        """The knowledge of the instances ``index`` (a gather of every tensor)."""
        return Knowledge(self.logits[index], {k: v[index] for k, v in self.feats.items()})


def as_knowledge(value: Any, side: str) -> Knowledge | None:
    """A ``Knowledge`` as given, a bare logits tensor wrapped in one, or ``None``."""
    if value is None or isinstance(value, Knowledge):
        return value
    if isinstance(value, Tensor):
        return Knowledge(value)
    raise DglkdError(f"{side}: expected dglkd.Knowledge or a logits tensor, "
                     f"got {type(value).__name__}")


@dataclass
class DistillBatch:
    """Everything a method may look at for one step.

    ``label_mask`` marks instances whose labels may be used (training nodes);
    ``distill_mask`` marks instances whose teacher knowledge may be used (all nodes
    transductively, observed nodes inductively). ``None`` means every instance.
    ``index`` holds the instances' positions among the training instances: the row a
    memory bank keeps for each (``MethodContext.num_instances`` rows in all).
    ``graph`` is the relational graph among the instances (the native or sampled graph),
    or ``None`` where a method builds its own (kNN over an image batch).
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
            raise DglkdError("this method needs labels, but none were given (labels=...)")
        logits, labels = self.student.logits, self.labels
        if self.label_mask is not None:
            logits, labels = logits[self.label_mask], labels[self.label_mask]
        return logits, labels

    def distill_rows(self, tensor: Tensor) -> Tensor:
        return tensor if self.distill_mask is None else tensor[self.distill_mask]

    def feature_pairs(self, student_feature: str, teacher_feature: str,
                      limit: int) -> tuple[Tensor, Tensor]:
        """Both networks' named features of the distilled instances, flattened; at most
        ``limit`` instances, the same random rows of both when there are more."""
        student = self.distill_rows(self.student.feat(student_feature)).flatten(1)
        teacher = self.distill_rows(self.teacher.feat(teacher_feature)).flatten(1)
        if len(student) > limit:
            keep = torch.randperm(len(student), device=student.device)[:limit]
            student, teacher = student[keep], teacher[keep]
        return student, teacher


@dataclass
class MethodContext:
    """Facts about the data and the two networks that a method may need to build modules.

    ``instance_labels`` holds the label of every training instance (by position, -1
    where unknown): contrastive methods draw negatives from other classes with it.
    ``dglkd.context_for`` builds one from the two networks and a sample input, the way
    the engine does.
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
            raise DglkdError(
                f"{side} feature {name!r}: its shape is unknown to this MethodContext "
                f"(known: {sorted(shapes) or 'none'}); build the context with "
                f"dglkd.context_for(student, teacher, sample_inputs), or give "
                f"{side}_shapes={{{name!r}: shape}}"
            )
        return shapes[name]

    def dim(self, side: str, name: str) -> int:
        """Width of a named feature once flattened to one vector per instance."""
        return math.prod(self.shape(side, name))


class MethodParams(pydantic.BaseModel):
    """Base of every method's constants; give each field a ``description``."""

    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)


class DistillMethod(nn.Module):
    """Base class: subclasses set ``Params`` and implement ``loss_terms``.

    ``loss_terms`` returns the method's own unweighted terms, each named in
    ``term_weights()`` (one term named like the method, weight 1, unless a subclass says
    otherwise); ``forward`` multiplies them by those weights. ``paper_recipe`` is the
    weighted sum of methods the method's paper trains with, used when a config names the
    method alone (``method: {name: kd}`` is ``{ce: 1.0, kd: 1.0}``).
    """

    Params: ClassVar[type[MethodParams]] = MethodParams
    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    paper_recipe: ClassVar[dict[str, float] | None] = None

    def __init__(self, params: MethodParams, context: MethodContext) -> None:
        super().__init__()
        self.params = params
        self.context = context

    # -- what a subclass provides -------------------------------------------------
    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        raise NotImplementedError

    def term_weights(self) -> dict[str, float]:
        """The method's own terms and their relative weights (several for RKD, GLNN)."""
        return {self.name: 1.0}

    def required_features(self) -> tuple[list[str], list[str]]:
        """Names of the (student, teacher) hidden features this method reads."""
        return [], []

    def reads_graph(self) -> bool:
        """Whether ``loss_terms`` reads ``batch.graph``, the relation among the batch's
        instances. The engine passes it only to methods that say so: for sampled blocks
        it is an induced subgraph built per batch, a cost the others should not pay."""
        return False

    def pretrain_epochs(self) -> int:
        """Epochs of a first stage that trains the method's own modules on the teacher alone
        (MHGD); 0 for methods without one. The engine runs that stage before distilling."""
        return 0

    def pretrain_terms(self, teacher: Knowledge, index: Tensor | None = None) -> dict[str, Tensor]:
        """Loss terms of the first stage, from the teacher's knowledge of one batch."""
        raise NotImplementedError(f"{self.name} has no pretraining stage")

    def end_pretraining(self) -> None:
        """Called once after the first stage (e.g. to freeze the modules it trained)."""

    def set_epoch(self, epoch: int) -> None:
        """Told the training epoch before it starts (for methods whose behaviour ramps)."""

    def embeddings(self, batch: DistillBatch) -> dict[str, Tensor]:
        """Named per-instance embeddings worth a look in TensorBoard's projector (HKD's
        holistic embeddings, say); empty for methods without any."""
        return {}

    # -- shared behaviour ----------------------------------------------------------
    @classmethod
    def recipe(cls) -> dict[str, float]:
        return dict(cls.paper_recipe or {cls.name: 1.0})

    def weight(self, term: str) -> float:
        weights = self.term_weights()
        if term not in weights:
            raise DglkdError(f"method {self.name!r}: no term {term!r}; "
                             f"its terms: {', '.join(weights)}")
        return weights[term]

    def forward(
        self,
        student: Knowledge | Tensor,
        teacher: Knowledge | Tensor | None = None,
        *,
        labels: Tensor | None = None,
        label_mask: Tensor | None = None,
        distill_mask: Tensor | None = None,
        graph: Any = None,
        index: Tensor | None = None,
    ) -> dict[str, Tensor]:
        student = as_knowledge(student, "student")
        teacher = as_knowledge(teacher, "teacher")
        if student is None:
            raise DglkdError("student: the student's knowledge is required")
        if teacher is None and self.needs_teacher:
            raise DglkdError(f"method {self.name!r} needs the teacher's knowledge")
        teacher = teacher.detach() if teacher is not None else None
        batch = DistillBatch(student, teacher, labels, label_mask, distill_mask, graph, index)
        return self.weighted(self.loss_terms(batch))

    def weighted(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: self.weight(name) * value for name, value in terms.items()}

    def formula(self) -> str:
        terms = [f"{weight:g}*{term}" for term, weight in self.term_weights().items() if weight]
        return "loss = " + (" + ".join(terms) or "0")

    def constants(self) -> dict[str, Any]:
        """The method's constants as configured (for logs and result tables)."""
        return self.params.model_dump(mode="json")

    def extra_repr(self) -> str:
        return self.formula()

    def __str__(self) -> str:
        return f"{self.name}: {self.formula()}"


METHODS: Registry[type[DistillMethod]] = Registry("method")


def register_method(name: str):
    """Class decorator: make a method available under ``name`` in configs and the API.

    Works from any module (a user's own): name the module in a config's ``imports:`` or
    in the ``dglkd.methods`` entry-point group of a package, and ``dglkd distill``,
    ``compare`` and ``evaluate`` find it.
    """

    def decorate(cls: type[DistillMethod]) -> type[DistillMethod]:
        if not (isinstance(cls, type) and issubclass(cls, DistillMethod)):
            raise DglkdError(f"register_method({name!r}): {cls!r} is not a DistillMethod class")
        cls.name = name
        return METHODS.register(name)(cls)

    return decorate


def parse_params(name: str, params: dict[str, Any], key: str = "method") -> MethodParams:
    cls = METHODS.get(name, key=f"{key}.name")
    try:
        return cls.Params(**params)
    except pydantic.ValidationError as exc:
        allowed = list(cls.Params.model_fields)
        raise DglkdError(describe_validation_error(exc, key, allowed)) from None


def build_method(
    name: str, context: MethodContext | int | None = None, **params: Any
) -> DistillMethod:
    """Build a registered method by name: ``build_method("kd", num_classes, temperature=4)``.

    ``context`` is a :class:`MethodContext` (see ``dglkd.context_for``) or just the number
    of classes for methods that build no modules.
    """
    if context is None or isinstance(context, int):
        context = MethodContext(num_classes=int(context or 0))
    return METHODS.get(name)(parse_params(name, params), context)


def require_graph(batch: DistillBatch, method: str) -> Any:
    if batch.graph is None:
        raise DglkdError(f"method {method!r} needs a graph over the instances; none was given "
                         "(graph=...; a method declares that it reads one with reads_graph())")
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

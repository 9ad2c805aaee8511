"""What a method needs to know before its first step, found the way the engine finds it.

``capture`` runs a network once and keeps its named hidden features; ``context_for``
probes the two networks on a sample input and builds the :class:`MethodContext` (feature
shapes, number of classes, instance count and the labels contrastive methods draw
negatives by). The engine uses these same two functions, so a user's own loop gets
exactly what ``dglkd distill`` gets.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dglkd.errors import DglkdError
from dglkd.methods.base import Knowledge, MethodContext
from dglkd.models import FeatureTap


def capture(model: nn.Module, names: Sequence[str], *inputs: Any) -> Knowledge:
    """One forward pass ``model(*inputs)``, keeping the named hidden features."""
    with FeatureTap(model, names) as tap:
        logits = model(*inputs)
        return Knowledge(logits, tap.pop())


@torch.no_grad()
def frozen_knowledge(model: nn.Module, names: Sequence[str], *inputs: Any) -> Knowledge:
    """``capture`` in eval mode without gradients, leaving the model's mode as it was."""
    was_training = model.training
    model.eval()
    try:
        return capture(model, names, *inputs)
    finally:
        model.train(was_training)


def _as_inputs(sample_inputs: Any) -> tuple:
    return tuple(sample_inputs) if isinstance(sample_inputs, (tuple, list)) else (sample_inputs,)


def instance_labels(labels: Tensor, train_mask: Tensor | None,
                    predictions: Tensor | None) -> Tensor:
    """True labels of training instances; elsewhere the teacher's predictions, or -1."""
    labels = labels.long()
    if train_mask is None:
        return labels
    fill = predictions.long() if predictions is not None else torch.full_like(labels, -1)
    return torch.where(train_mask.bool(), labels, fill.to(labels.device))


def context_for(student: nn.Module, teacher: nn.Module | None = None,
                sample_inputs: Any = (), *, labels: Tensor | None = None,
                train_mask: Tensor | None = None,
                teacher_predictions: Tensor | None = None) -> MethodContext:
    """The :class:`MethodContext` for distilling ``teacher`` into ``student``.

    ``sample_inputs`` is what the networks are called with (``(graph, feat)``, or a few
    images): shapes of named features are probed from it on first use (eval mode, no
    gradients). ``labels`` are the labels of the training instances by position — the
    positions ``index=`` gives every step (the rows a memory bank keeps) — and
    ``train_mask`` marks which of them are known; the others take the teacher's
    predictions (``teacher_predictions``, or the teacher run on ``sample_inputs``
    when it covers every instance, a whole graph) as the label negatives are drawn by.
    """
    inputs = _as_inputs(sample_inputs)
    if not inputs:
        raise DglkdError("sample_inputs: give what the networks are called with, e.g. "
                         "(graph, feat) or a batch of images")
    models = {"student": student, "teacher": teacher}

    def probe(side: str, name: str) -> tuple[int, ...]:
        model = models[side]
        if model is None:
            raise DglkdError(f"{side} feature {name!r}: no {side} network was given to "
                             "context_for")
        return tuple(frozen_knowledge(model, [name], *inputs).feat(name).shape[1:])

    num_classes = frozen_knowledge(student, [], *inputs).logits.shape[-1]
    context = MethodContext(num_classes=int(num_classes), probe=probe)
    if labels is not None:
        if teacher_predictions is None and teacher is not None and train_mask is not None:
            logits = frozen_knowledge(teacher, [], *inputs).logits
            if len(logits) != len(labels):
                raise DglkdError(f"labels: {len(labels)} instances, but the teacher gives "
                                 f"{len(logits)} rows on sample_inputs; pass "
                                 "teacher_predictions= for the instances without labels")
            teacher_predictions = logits.argmax(-1)
        context.num_instances = len(labels)
        context.instance_labels = instance_labels(labels, train_mask, teacher_predictions).cpu()
    return context


__all__ = ["capture", "context_for", "frozen_knowledge", "instance_labels"]

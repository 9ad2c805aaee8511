"""NOSMOG's adversarial feature augmentation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor

from dglkd.errors import DglkdError
from dglkd.methods.base import (
    DistillBatch,
    DistillMethod,
    Knowledge,
    MethodParams,
    register_method,
)
from dglkd.methods.functional import soft_kl


@dataclass
class Rerun:
    """The student's input features of one batch, and the student run again on other
    features of the same shape (same graph or blocks, same rows as the batch's
    knowledge): what the engine hands a recipe whose members perturb the input."""

    features: Tensor
    run: Callable[[Tensor], Knowledge]


class AdvParams(MethodParams):
    eps: float = pydantic.Field(0.01, gt=0, le=10.0,
                                description="L∞ radius ε of the feature perturbation")
    steps: int = pydantic.Field(3, ge=1, le=50, description="sign-gradient ascent steps")
    step_size: float | None = pydantic.Field(
        None, gt=0, le=10.0, description="ascent step α; none: 2.5·ε/steps (Madry et al.'s "
                                         "choice, enough to reach the boundary)")
    random_start: bool = pydantic.Field(True, description="start from a uniform draw in "
                                                          "[−ε, ε] instead of 0")
    lam: float = pydantic.Field(0.0, ge=0.0, le=1.0,
                                description="share of CE on the labels in the attacked and "
                                            "trained loss; 1 − λ goes to the KL to the teacher")
    temperature: float = pydantic.Field(1.0, ge=0.01, le=1000,
                                       description="softmax temperature of the KL")


@register_method("adv_aug")
class AdversarialAugmentation(DistillMethod):
    """Tian et al., "Learning MLPs on Graphs: A Unified View of Effectiveness, Robustness,
    and Efficiency" (NOSMOG), ICLR 2023: adversarial feature augmentation.

    A perturbation δ of the student's input features, ‖δ‖∞ ≤ ``eps``, is found by
    ``steps`` steps of projected sign-gradient ascent (PGD) on the student's loss
    ``L = λ·CE(labelled rows) + (1−λ)·KL(teacher ‖ student)`` (GLNN's, as NOSMOG attacks
    the distillation loss), δ ← clip(δ + α·sign(∇_δ L(X + δ)), −ε, ε), the student's
    weights untouched; ``adv_aug = L(X + δ)`` then trains the student on the perturbed
    features, next to the recipe's terms on the clean ones.

    The student must be run again on X + δ: the engine passes a :class:`Rerun` to the
    recipe (``rerun=``), which hands it to this method; called without one, the method
    says so in one line.
    """

    Params = AdvParams
    uses_rerun = True

    def __init__(self, params: AdvParams, context: Any) -> None:
        super().__init__(params, context)
        self._rerun: Rerun | None = None

    def bind_rerun(self, rerun: Rerun | None) -> None:
        """The batch's re-run of the student (set by the recipe before each call)."""
        self._rerun = rerun

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        rerun = self._rerun
        if rerun is None:
            raise DglkdError(f"method {self.name!r} re-runs the student on perturbed "
                             "features; call the recipe with rerun=dglkd.methods.adv.Rerun"
                             "(features, run)")
        delta = self.perturbation(batch, rerun)
        return {"adv_aug": self._loss(batch, rerun.run(rerun.features + delta))}

    def perturbation(self, batch: DistillBatch, rerun: Rerun) -> Tensor:
        """δ after the ascent steps (detached)."""
        p = self.params
        step = p.step_size if p.step_size is not None else 2.5 * p.eps / p.steps
        features = rerun.features.detach()
        if p.random_start:
            delta = torch.empty_like(features).uniform_(-p.eps, p.eps)
        else:
            delta = torch.zeros_like(features)
        for _ in range(p.steps):
            delta.requires_grad_(True)
            loss = self._loss(batch, rerun.run(features + delta))
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * grad.sign()).clamp(-p.eps, p.eps)
        return delta.detach()

    def _loss(self, batch: DistillBatch, student: Knowledge) -> Tensor:
        p = self.params
        loss = student.logits.new_zeros(())
        if p.lam:
            logits, labels = student.logits, batch.labels
            if labels is None:
                raise DglkdError(f"method {self.name!r} with lam > 0 needs labels")
            if batch.label_mask is not None:
                logits, labels = logits[batch.label_mask], labels[batch.label_mask]
            loss = loss + p.lam * F.cross_entropy(logits, labels)
        if p.lam < 1:
            loss = loss + (1 - p.lam) * soft_kl(batch.distill_rows(student.logits),
                                                batch.distill_rows(batch.teacher.logits),
                                                p.temperature)
        return loss


__all__ = ["AdvParams", "AdversarialAugmentation", "Rerun"]

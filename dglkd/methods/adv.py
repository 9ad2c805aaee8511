"""NOSMOG's adversarial feature augmentation."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import pydantic
import torch
from torch import Tensor

from dglkd.errors import DglkdError
from dglkd.methods.base import (
    DistillBatch,
    DistillMethod,
    Knowledge,
    register_method,
)
from dglkd.methods.glnn import GLNNParams, glnn_terms, glnn_weights


@dataclass
class Rerun:
    """The student's input features of one batch, and the student run again on other
    features of the same shape (same graph or blocks, same rows as the batch's
    knowledge): what the engine hands a recipe whose members perturb the input."""

    features: Tensor
    run: Callable[[Tensor], Knowledge]


class AdvParams(GLNNParams):
    """GLNN's ``lam`` and ``temperature`` shape the loss that is attacked and trained."""

    eps: float = pydantic.Field(0.01, gt=0, le=10.0,
                                description="L∞ radius ε of the feature perturbation")
    steps: int = pydantic.Field(3, ge=1, le=50, description="sign-gradient ascent steps")
    step_size: float | None = pydantic.Field(
        None, gt=0, le=10.0, description="ascent step α; none: 2.5·ε/steps (Madry et al.'s "
                                         "choice, enough to reach the boundary)")
    random_start: bool = pydantic.Field(True, description="start from a uniform draw in "
                                                          "[−ε, ε] instead of 0")


class RerunMethod(DistillMethod):
    """Base of methods that run the student again on other input features of the batch
    (``adv_aug``, ``mixup``): the recipe hands them the batch's :class:`Rerun` before
    each call (``rerun=``, which the engine passes when ``Recipe.needs_rerun``)."""

    uses_rerun = True

    def __init__(self, params: Any, context: Any) -> None:
        super().__init__(params, context)
        self._rerun: Rerun | None = None

    def bind_rerun(self, rerun: Rerun | None) -> None:
        """The batch's re-run of the student (set by the recipe before each call)."""
        self._rerun = rerun

    def rerun(self) -> Rerun:
        """The bound re-run, or a one-line error saying how to give one."""
        if self._rerun is None:
            raise DglkdError(f"method {self.name!r} re-runs the student on other input "
                             "features; call the recipe with rerun=dglkd.methods.adv.Rerun"
                             "(features, run)")
        return self._rerun


@register_method("adv_aug")
class AdversarialAugmentation(RerunMethod):
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

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        rerun = self.rerun()
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
        """GLNN's weighted loss on the student's outputs ``student``."""
        terms = glnn_terms(replace(batch, student=student), self.params)
        weights = glnn_weights(self.params)
        return sum(weights[name] * term for name, term in terms.items())


__all__ = ["AdvParams", "AdversarialAugmentation", "Rerun", "RerunMethod"]

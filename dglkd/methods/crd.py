"""Contrastive representation distillation (CRD)."""
from __future__ import annotations

from torch import Tensor

from dglkd.methods.base import DistillBatch, register_method
from dglkd.methods.memory import ContrastiveDistill, ContrastiveParams


class CRDParams(ContrastiveParams):
    """CRD's constants are the shared contrastive ones (memory momentum 0.5)."""


@register_method("crd")
class CRD(ContrastiveDistill):
    """Tian et al., "Contrastive Representation Distillation", ICLR 2020.

    ``crd = L_s→t + L_t→s``. Each network's
    penultimate feature is embedded (Linear + l2-normalise, 128-d); a student anchor's
    positive is the teacher's memory row of the same instance and its negatives are
    teacher memory rows of other classes (and symmetrically for teacher anchors): the
    authors' choice, which keeps positive and negatives in one embedding space. Memory
    rows follow the embeddings with momentum 0.5 after each step. Defaults follow the
    authors' CIFAR-100 runs: the recipe ``ce + 0.8·crd`` (add ``kd: 1.0`` for "CRD+KD");
    16,384 negatives, temperature 0.07.

    Differences, on purpose: the loss is the softmax (InfoNCE) form over the positive and
    the negatives (as in HKD's code), not CRD's binary NCE, whose normalising constant is
    fixed on the first batch; and the negatives are one pool shared by the batch with
    same-class entries masked per anchor (see :mod:`dglkd.methods.memory`), not K
    gathered per anchor.
    ``negatives="batch"`` contrasts within the batch instead of a memory bank.
    """

    Params = CRDParams
    paper_recipe = {"ce": 1.0, "crd": 0.8}

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        view = self.view(batch)
        loss = self.targets(view).loss(view.z)
        self.remember(view)
        return {"crd": loss}

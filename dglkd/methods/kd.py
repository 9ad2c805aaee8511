"""Vanilla knowledge distillation, and the CE/KD terms other methods carry along."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dglkd.methods.base import DistillBatch, DistillMethod, MethodParams, register_method
from dglkd.methods.functional import soft_kl


class ResponseParams(MethodParams):
    """CE on the labels plus an optional KD term: "X+KD" is ``kd_weight > 0``."""

    ce_weight: float = 1.0
    kd_weight: float = 0.0
    kd_temperature: float = 4.0


def response_terms(method: DistillMethod, batch: DistillBatch) -> dict[str, Tensor]:
    """The unweighted ``ce`` and ``kd`` terms of a method whose params extend ResponseParams;
    a term whose weight is 0 is not computed."""
    terms = {}
    if method.weight("ce"):
        terms["ce"] = F.cross_entropy(*batch.labelled())
    if method.weight("kd"):
        terms["kd"] = soft_kl(
            batch.distill_rows(batch.student.logits),
            batch.distill_rows(batch.teacher.logits),
            method.params.kd_temperature,
        )
    return terms


class KDParams(ResponseParams):
    kd_weight: float = 1.0


@register_method("kd")
class KD(DistillMethod):
    """Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS-W 2015.

    ``loss = ce_weight·CE(labelled) + kd_weight·KL(softmax(t/T) ‖ softmax(s/T))·T²``
    (T = ``kd_temperature``), the KL averaged over the instances whose teacher knowledge
    may be used.
    """

    Params = KDParams

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        return response_terms(self, batch)

"""Vanilla knowledge distillation."""
from __future__ import annotations

from torch import Tensor
import torch.nn.functional as F

from dglkd.methods.base import DistillBatch, DistillMethod, MethodParams, register_method
from dglkd.methods.functional import soft_kl


class KDParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 4.0


@register_method("kd")
class KD(DistillMethod):
    """Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS-W 2015.

    ``loss = ce_weight·CE(labelled) + kd_weight·KL(softmax(t/T) ‖ softmax(s/T))·T²``, the KL
    averaged over the instances whose teacher knowledge may be used.
    """

    Params = KDParams

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        terms = {}
        if self.weight("ce"):
            terms["ce"] = F.cross_entropy(*batch.labelled())
        if self.weight("kd"):
            terms["kd"] = soft_kl(
                batch.distill_rows(batch.student.logits),
                batch.distill_rows(batch.teacher.logits),
                self.params.temperature,
            )
        return terms

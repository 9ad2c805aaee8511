"""Vanilla knowledge distillation: the KD term."""
from __future__ import annotations

import pydantic
from torch import Tensor

from dglkd.methods.base import DistillBatch, DistillMethod, MethodParams, register_method
from dglkd.methods.functional import soft_kl


class KDParams(MethodParams):
    temperature: float = pydantic.Field(
        4.0, ge=0.01, le=1000,
        description="softmax temperature T of both networks' logits (the KL is "
                    "multiplied by T²)")


def kd_term(batch: DistillBatch, temperature: float) -> Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T))·T² over the instances whose teacher knowledge may
    be used."""
    return soft_kl(batch.distill_rows(batch.student.logits),
                   batch.distill_rows(batch.teacher.logits), temperature)


@register_method("kd")
class KD(DistillMethod):
    """Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS-W 2015.

    ``kd = KL(softmax(t/T) ‖ softmax(s/T))·T²`` (T = ``temperature``), averaged over the
    instances whose teacher knowledge may be used. The paper trains with ``ce + kd``.
    """

    Params = KDParams
    paper_recipe = {"ce": 1.0, "kd": 1.0}

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        return {"kd": kd_term(batch, self.params.temperature)}

"""Training on labels alone: the baseline every distillation method is compared with."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dglkd.methods.base import DistillBatch, DistillMethod, MethodParams, register_method


class CEParams(MethodParams):
    """Cross-entropy has no constants."""


@register_method("ce")
class CrossEntropy(DistillMethod):
    """No distillation: cross-entropy on the labelled instances (the "student alone" row).
    Also the objective the engine trains teachers with."""

    Params = CEParams
    needs_teacher = False

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(*batch.labelled())}

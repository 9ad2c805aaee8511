"""Mixup of the student's inputs towards the same mixture of the teacher's outputs."""
from __future__ import annotations

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor

from dglkd.errors import DglkdError
from dglkd.methods.adv import Rerun, RerunMethod
from dglkd.methods.base import DistillBatch, MethodParams, register_method


class MixupParams(MethodParams):
    alpha: float = pydantic.Field(
        0.2, gt=0, le=100, description="λ ~ Beta(α, α), one per instance: a small α keeps "
                                       "most mixtures close to one of the two instances")
    temperature: float = pydantic.Field(1.0, ge=0.01, le=1000,
                                        description="softmax temperature of both sides")


def mixup_loss(rerun: Rerun, teacher_logits: Tensor, rows: Tensor, weight: Tensor,
               partner: Tensor, temperature: float = 1.0) -> Tensor:
    """The student run on x̃ = λ·x_rows + (1−λ)·x_partner (every other row unchanged),
    against p̃ = λ·p_rows + (1−λ)·p_partner of the teacher's softened outputs:
    KL(p̃ ‖ softmax(s(x̃)/T))·T², averaged over ``rows``. ``teacher_logits`` are the
    teacher's outputs of every row; ``weight`` holds λ, one per entry of ``rows``."""

    def mix(values: Tensor) -> Tensor:
        lam = weight.to(values).view(-1, *([1] * (values.dim() - 1)))
        return lam * values[rows] + (1 - lam) * values[partner]

    features = rerun.features.detach()
    mixed = features.clone()
    mixed[rows] = mix(features)
    target = mix(F.softmax(teacher_logits.float() / temperature, dim=-1))
    log_student = F.log_softmax(rerun.run(mixed).logits[rows] / temperature, dim=-1)
    return F.kl_div(log_student, target, reduction="batchmean") * temperature**2


@register_method("mixup")
class Mixup(RerunMethod):
    """Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018, with the
    teacher's outputs as the targets that are mixed.

    Each instance i whose teacher knowledge may be used is paired with a random one π(i)
    among them and, with λ_i ~ Beta(``alpha``, ``alpha``), the student is run again on
    x̃_i = λ_i·x_i + (1−λ_i)·x_π(i) and trained towards p̃_i = λ_i·p_i + (1−λ_i)·p_π(i),
    p = softmax(teacher logits / T): ``mixup = KL(p̃ ‖ softmax(s(x̃)/T))·T²``, averaged
    (:func:`mixup_loss`), next to the recipe's terms on the clean inputs. It needs one
    input row per instance: a graph-free student's node batch or whole graph (an MLP
    reading words and position features), a CNN's image batch. A GNN on the whole graph
    mixes the nodes' input features before message passing; a GNN on sampled blocks has
    more input rows than instances and is refused in one line.
    """

    Params = MixupParams

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        rerun = self.rerun()
        instances = len(batch.student.logits)
        if len(rerun.features) != instances:
            raise DglkdError(f"method {self.name!r} mixes input rows with their instances' "
                             f"targets, but this batch has {len(rerun.features)} input rows "
                             f"for {instances} instances (a GNN on sampled blocks); use a "
                             "graph-free student or train full-batch")
        rows = torch.arange(instances, device=batch.student.logits.device)
        if batch.distill_mask is not None:
            rows = rows[batch.distill_mask]
        if len(rows) == 0:
            return {"mixup": batch.student.logits.sum() * 0.0}
        weight = torch.distributions.Beta(self.params.alpha, self.params.alpha).sample(
            (len(rows),))
        partner = rows[torch.randperm(len(rows), device=rows.device)]
        return {"mixup": mixup_loss(rerun, batch.teacher.logits, rows, weight, partner,
                                    self.params.temperature)}


__all__ = ["Mixup", "MixupParams", "mixup_loss"]

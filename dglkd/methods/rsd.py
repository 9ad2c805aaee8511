"""NOSMOG's representation-similarity distillation (RSD)."""
from __future__ import annotations

import pydantic
import torch.nn.functional as F
from torch import Tensor, nn

from dglkd.methods.base import (
    DistillBatch,
    DistillMethod,
    MethodContext,
    MethodParams,
    register_method,
)


class RSDParams(MethodParams):
    """Features by name (``hidden``: the last hidden layer of dglkd's GNNs and MLPs)."""

    student_feature: str = pydantic.Field("hidden", description="the student's hidden "
                                                                "representation")
    teacher_feature: str = pydantic.Field("hidden", description="the teacher's hidden "
                                                                "representation")
    nodes: int = pydantic.Field(
        1024, ge=2, le=1 << 20, description="instances sampled per step for the n × n "
                                            "similarity matrices (all when fewer)")
    projection: bool = pydantic.Field(
        True, description="map the student's representation to the teacher's width with a "
                          "learned Linear (always when the widths differ)")
    normalize: bool = pydantic.Field(
        False, description="cosine similarities (rows L2-normalised) instead of the paper's "
                           "inner products")


def similarity_mse(student: Tensor, teacher: Tensor, normalize: bool = False) -> Tensor:
    """mean over (i, j) of (s_i·s_j − t_i·t_j)²: ‖S_s − S_t‖_F² / n² for the n × n
    similarity matrices of the rows of ``student`` and ``teacher``."""
    if normalize:
        student, teacher = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    return (student @ student.t() - teacher @ teacher.t()).pow(2).mean()


@register_method("rsd")
class RSD(DistillMethod):
    """Tian et al., "Learning MLPs on Graphs: A Unified View of Effectiveness, Robustness,
    and Efficiency" (NOSMOG), ICLR 2023: representation-similarity distillation.

    Our reading of the paper: the teacher's hidden representations H_T and the student's,
    transformed by a learned map to H'_S = W·H_S, define similarity matrices S_T = H_T H_Tᵀ
    and S_S = H'_S H'_Sᵀ over a set of nodes; ``rsd = ‖S_S − S_T‖_F² / n²`` (a mean
    squared error, so the weight does not depend on n) over ``nodes`` instances sampled
    per step among those whose teacher knowledge may be used (all of them when fewer).
    The map is a bias-free Linear owned by the method (the paper writes σ(W·H_S); we leave
    out σ, since dglkd's hidden features are pre-activation and their similarities may be
    negative, which a ReLU image could not match). ``normalize`` compares cosine
    similarities instead. NOSMOG trains ``glnn``'s KL to the teacher plus this term plus
    adversarial feature augmentation (``adv_aug``) on DeepWalk position features
    (``dglkd.data.load(..., positional=...)``).
    """

    Params = RSDParams

    def __init__(self, params: RSDParams, context: MethodContext) -> None:
        super().__init__(params, context)
        s_dim = context.dim("student", params.student_feature)
        t_dim = context.dim("teacher", params.teacher_feature)
        self.projection = (nn.Linear(s_dim, t_dim, bias=False)
                           if params.projection or s_dim != t_dim else nn.Identity())

    def required_features(self) -> tuple[list[str], list[str]]:
        return [self.params.student_feature], [self.params.teacher_feature]

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        student, teacher = batch.feature_pairs(self.params.student_feature,
                                               self.params.teacher_feature, self.params.nodes)
        if len(student) == 0:
            return {"rsd": student.sum() * 0.0}
        return {"rsd": similarity_mse(self.projection(student), teacher, self.params.normalize)}


__all__ = ["RSD", "RSDParams", "similarity_mse"]

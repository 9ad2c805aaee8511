"""Relational knowledge distillation: distances and angles among the instances."""
from __future__ import annotations

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor

from dglkd.methods.base import DistillBatch, DistillMethod, MethodParams, register_method


class RKDParams(MethodParams):
    """Penultimate features by name (``hidden`` for GNNs/MLPs, ``pool`` for CNNs)."""

    student_feature: str = pydantic.Field("hidden", description="the student's feature")
    teacher_feature: str = pydantic.Field("hidden", description="the teacher's feature")
    distance_weight: float = pydantic.Field(25.0, ge=0, le=1e6,
                                            description="weight of the distance term")
    angle_weight: float = pydantic.Field(50.0, ge=0, le=1e6,
                                         description="weight of the angle term")
    max_instances: int = pydantic.Field(256, ge=3, le=4096,
                                        description="instances per step (the angle term "
                                                    "costs B³)")


def normalized_distances(x: Tensor) -> Tensor:
    """Pairwise Euclidean distances (B, B) divided by their mean over distinct pairs."""
    sq = x.pow(2).sum(1)
    dist = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * x @ x.t()).clamp_min(1e-12).sqrt()
    # the diagonal is exactly 0 (the clamp above only keeps sqrt's gradient finite)
    dist = dist * (1 - torch.eye(len(x), device=x.device, dtype=x.dtype))
    positive = dist > 0
    return dist / dist[positive].mean() if bool(positive.any()) else dist


def triplet_angles(x: Tensor) -> Tensor:
    """cos of the angle at i between j and k, for every (i, j, k): (B, B, B)."""
    edges = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), dim=2)  # [i, j] = unit(x_j − x_i)
    return edges @ edges.transpose(1, 2)


@register_method("rkd")
class RKD(DistillMethod):
    """Park et al., "Relational Knowledge Distillation", CVPR 2019.

    Terms ``distance_weight·L_d + angle_weight·L_a`` (recipe ``ce + rkd``) on
    penultimate features (``hidden`` of our GNNs and MLPs; use ``pool`` for CNNs):
    L_d is the smooth-L1 loss between the student's and the teacher's pairwise distances,
    each divided by its mean; L_a between the cosines of the angles of all triplets. The
    paper's weights are 25 and 50. With more than ``max_instances`` instances (a whole
    graph's nodes), a random subset of that size is used each step: the angle term costs
    B³.
    """

    Params = RKDParams
    paper_recipe = {"ce": 1.0, "rkd": 1.0}

    def term_weights(self) -> dict[str, float]:
        return {"distance": self.params.distance_weight, "angle": self.params.angle_weight}

    def required_features(self) -> tuple[list[str], list[str]]:
        return [self.params.student_feature], [self.params.teacher_feature]

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        terms = {}
        student, teacher = batch.feature_pairs(self.params.student_feature,
                                               self.params.teacher_feature,
                                               self.params.max_instances)
        for name, relation in (("distance", normalized_distances), ("angle", triplet_angles)):
            if self.weight(name):
                with torch.no_grad():
                    target = relation(teacher)
                terms[name] = F.smooth_l1_loss(relation(student), target)
        return terms

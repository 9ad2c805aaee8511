"""FitNet hint regression."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from dglkd.errors import DglkdError
import pydantic

from dglkd.methods.base import (
    DistillBatch,
    DistillMethod,
    MethodContext,
    MethodParams,
    register_method,
)


class FitNetParams(MethodParams):
    """Guided (student) and hint (teacher) features by name: ``hidden`` is the last hidden
    layer of our GNNs and MLPs; CNNs name ``stage1``..``stageN`` and ``pool``."""

    student_feature: str = pydantic.Field("hidden", description="the student's guided feature")
    teacher_feature: str = pydantic.Field("hidden", description="the teacher's hint feature")


def _is_map(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3


def hint_projection(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """A 1×1 convolution between (C, H, W) maps of one resolution, else a Linear between the
    flattened features."""
    if _is_map(student_shape) and _is_map(teacher_shape):
        if student_shape[1:] != teacher_shape[1:]:
            raise DglkdError(
                f"method.teacher_feature: map {teacher_shape} differs in height/width from "
                f"the student's {student_shape}; FitNet pairs maps of one resolution"
            )
        return nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1)
    linear = nn.Linear(math.prod(student_shape), math.prod(teacher_shape))
    return nn.Sequential(nn.Flatten(1), linear)


@register_method("fitnet")
class FitNet(DistillMethod):
    """Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

    ``fitnet = MSE(r(s), t)``: a learned regressor
    ``r`` (a 1×1 convolution between feature maps of one resolution, a Linear between
    vectors) maps the student's guided feature onto the teacher's hint, the MSE averaged over
    elements. Trained in one stage with the task loss (as in the CRD benchmark, where
    recipe is ``ce + 100·fitnet``), not in the paper's two stages.
    """

    Params = FitNetParams
    paper_recipe = {"ce": 1.0, "fitnet": 100.0}

    def __init__(self, params: FitNetParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self.student_shape = context.shape("student", params.student_feature)
        self.teacher_shape = context.shape("teacher", params.teacher_feature)
        self.projection = hint_projection(self.student_shape, self.teacher_shape)

    def required_features(self) -> tuple[list[str], list[str]]:
        return [self.params.student_feature], [self.params.teacher_feature]

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        student = batch.distill_rows(batch.student.feat(self.params.student_feature))
        teacher = batch.distill_rows(batch.teacher.feat(self.params.teacher_feature))
        hint = self.projection(student)
        target = teacher.reshape(hint.shape)
        # an empty selection gives 0, not the NaN of a mean over nothing
        return {"fitnet": F.mse_loss(hint, target) if len(hint) else hint.sum()}

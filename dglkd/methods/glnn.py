"""GNN-to-MLP distillation (GLNN)."""
from __future__ import annotations

import pydantic
import torch.nn.functional as F
from torch import Tensor

from dglkd.methods.base import DistillBatch, DistillMethod, MethodParams, register_method
from dglkd.methods.kd import kd_term


class GLNNParams(MethodParams):
    lam: float = pydantic.Field(0.0, ge=0.0, le=1.0,
                                description="λ: the share of CE on the labels; 1 − λ goes "
                                            "to the KL to the teacher")
    temperature: float = pydantic.Field(1.0, ge=0.01, le=1000,
                                        description="softmax temperature of the KL term")


@register_method("glnn")
class GLNN(DistillMethod):
    """Zhang et al., "Graph-less Neural Networks: Teaching Old MLPs New Tricks via
    Distillation", ICLR 2022.

    ``loss = λ·CE(labels on labelled nodes) + (1−λ)·KL(teacher ‖ student)`` with the KL over
    every node whose teacher output may be used (all nodes transductively, observed nodes
    inductively). The authors' released configs use λ = 0 and T = 1. The student may be
    an MLP or any GNN; the recipe is GLNN alone.
    """

    Params = GLNNParams

    def term_weights(self) -> dict[str, float]:
        return glnn_weights(self.params)

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        return glnn_terms(batch, self.params)


def glnn_weights(params: GLNNParams) -> dict[str, float]:
    return {"ce": params.lam, "kd": 1.0 - params.lam}


def glnn_terms(batch: DistillBatch, params: GLNNParams) -> dict[str, Tensor]:
    """GLNN's CE and KL terms (only those with a nonzero weight)."""
    terms = {}
    if params.lam:
        terms["ce"] = F.cross_entropy(*batch.labelled())
    if params.lam < 1:
        terms["kd"] = kd_term(batch, params.temperature)
    return terms

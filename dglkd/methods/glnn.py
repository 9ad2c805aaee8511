"""GNN-to-MLP distillation (GLNN)."""
from __future__ import annotations

import pydantic

from dglkd.methods.base import MethodParams, register_method
from dglkd.methods.kd import KD


class GLNNParams(MethodParams):
    lam: float = pydantic.Field(0.0, ge=0.0, le=1.0)
    kd_temperature: float = 1.0


@register_method("glnn")
class GLNN(KD):
    """Zhang et al., "Graph-less Neural Networks: Teaching Old MLPs New Tricks via
    Distillation", ICLR 2022.

    ``loss = λ·CE(labels on labelled nodes) + (1−λ)·KL(teacher ‖ student)`` with the KL over
    every node whose teacher output may be used (all nodes transductively, observed nodes
    inductively): KD's two terms with weights tied by λ. The authors' released configs use
    λ = 0 and T = 1 (``kd_temperature``). The student may be an MLP or any GNN.
    """

    Params = GLNNParams

    def weight(self, term: str) -> float:
        return {"ce": self.params.lam, "kd": 1.0 - self.params.lam}[term]

    def term_names(self) -> list[str]:
        return [t for t in ("ce", "kd") if self.weight(t)]

"""Correct and Smooth: a teacher's predictions refined by label propagation over the graph.

Huang et al., "Combining Label Propagation and Simple Models Out-performs Graph Neural
Networks", ICLR 2021. Two propagations of DGL's own ``dgl.nn.LabelPropagation``
(``Y ← α·Â·Y + (1 − α)·Y⁰``, ``Â`` the normalised adjacency):

1. *correct*: the residual ``onehot(y) − p`` of the labelled nodes (zero elsewhere) is
   spread over the graph and added to every node's prediction, rescaled so that each
   node's correction has the labelled residuals' mean L1 size (the paper's autoscale);
2. *smooth*: the corrected predictions, with the labelled nodes set to their labels, are
   propagated once more.

Only the labels of ``label_mask`` are read (in dglkd the training labels, never the
validation or test ones), so a refined teacher is still chosen and scored fairly. dglkd uses
it to give a graph-free student a stronger teacher: the graph is read while the teacher's
soft labels are made, never when the student predicts.

DGL is imported when the refinement runs, so the config can hold :class:`CorrectSmoothParams`
without it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import pydantic
import torch
from torch import Tensor

from dglkd import deps
from dglkd.errors import DglkdError

if TYPE_CHECKING:
    import dgl

# What a refinement without DGL is refused as.
_NEEDS_DGL = "teacher_refine (Correct and Smooth)"


class CorrectSmoothParams(pydantic.BaseModel):
    """Correct and Smooth's constants. The paper tunes them per dataset; these defaults
    are the setting measured on cora.npz in the README. Correction needs a teacher whose
    training-node residuals say something about its neighbours' errors: on Cora's public
    split it cost a GCN teacher 3 points (README), where ``correct_alpha: 0`` (smoothing
    alone) did not."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    correct_alpha: float = pydantic.Field(
        0.8, ge=0.0, lt=1.0, description="α of the correction's propagation (0: no correction)")
    smooth_alpha: float = pydantic.Field(
        0.8, ge=0.0, lt=1.0, description="α of the smoothing propagation (0: no smoothing)")
    steps: int = pydantic.Field(50, ge=1, le=1000, description="propagation steps of each")
    norm: Literal["sym", "row"] = pydantic.Field(
        "sym", description="adjacency normalisation: D^-1/2 A D^-1/2 (sym) or D^-1 A (row)")


def correct_and_smooth(graph: dgl.DGLGraph, probs: Tensor, labels: Tensor, label_mask: Tensor,
                       params: CorrectSmoothParams = CorrectSmoothParams()) -> Tensor:
    """``probs`` (N, C, rows summing to 1) refined over ``graph`` with the labels of
    ``label_mask``: rows of non-negative class probabilities summing to 1."""
    if probs.dim() != 2 or probs.shape[0] != graph.num_nodes():
        raise DglkdError(f"correct_and_smooth: probs must be (nodes, classes) for "
                         f"{graph.num_nodes()} nodes, got {tuple(probs.shape)}")
    if not bool(label_mask.any()):
        raise DglkdError("correct_and_smooth: no labelled nodes to propagate from")
    # Self-loops would let every node keep part of its own value at each step, on top of
    # the (1 - α) restart the method already has.
    graph = deps.dgl(_NEEDS_DGL).remove_self_loop(graph)
    truth = torch.nn.functional.one_hot(labels.long(), probs.shape[1]).to(probs)
    residual = torch.zeros_like(probs)
    residual[label_mask] = truth[label_mask] - probs[label_mask]
    corrected = probs + _autoscaled(_propagate(graph, residual, params.correct_alpha, params),
                                    residual[label_mask])
    corrected[label_mask] = truth[label_mask]
    smoothed = _propagate(graph, corrected, params.smooth_alpha, params).clamp_min(0)
    total = smoothed.sum(1, keepdim=True)
    # A row the propagation left at zero everywhere keeps the teacher's own prediction.
    return torch.where(total > 0, smoothed / total.clamp_min(1e-12), probs)


def _propagate(graph: dgl.DGLGraph, values: Tensor, alpha: float,
               params: CorrectSmoothParams) -> Tensor:
    if alpha == 0:
        return values
    spread = deps.dgl(_NEEDS_DGL).nn.LabelPropagation(params.steps, alpha, norm_type=params.norm, clamp=False)
    return spread(graph, values)


def _autoscaled(correction: Tensor, labelled_residual: Tensor) -> Tensor:
    """Every row of ``correction`` rescaled to the labelled residuals' mean L1 norm."""
    size = labelled_residual.abs().sum(1).mean()
    norms = correction.abs().sum(1, keepdim=True)
    return torch.where(norms > 0, correction * (size / norms.clamp_min(1e-12)), correction)

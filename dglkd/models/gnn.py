"""Node-classification models: GNNs from ``dgl.nn`` and the graph-free MLP.

Every model is called as ``model(graph, feat)`` and returns logits; the MLP ignores the
graph, so it can run on the features of any set of nodes alone. Layers live in
``self.layers`` (``layers.0`` … ``layers.{L-1}``), so a hidden layer's pre-activation
output can be captured by that path; ``feature_aliases`` names ``hidden`` (the last hidden
layer) for methods that want it without knowing the depth.
"""
from __future__ import annotations

from typing import Callable

import dgl.nn as dglnn
import torch
from torch import Tensor, nn

from dglkd.errors import DglkdError
from dglkd.models.registry import MODELS

NORMS = ("none", "batch", "layer")


def _norm(kind: str, width: int) -> nn.Module:
    if kind not in NORMS:
        raise DglkdError(f"norm: unknown {kind!r}; allowed: {', '.join(NORMS)}")
    return {"none": nn.Identity, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[kind](width)


class LayerStack(nn.Module):
    """Layers with norm → ReLU → dropout between them; subclasses build ``self.layers``."""

    uses_graph = True
    input_dropout = False

    def __init__(self, widths: list[int], dropout: float, norm: str) -> None:
        super().__init__()
        if len(widths) < 2:
            raise DglkdError("layers: must be at least 1")
        self.widths = widths
        self.dropout = nn.Dropout(dropout)
        self.norms = nn.ModuleList(_norm(norm, w) for w in widths[1:-1])
        self.layers = nn.ModuleList()
        last_hidden = len(widths) - 3
        self.feature_aliases = {"hidden": f"layers.{last_hidden}"} if last_hidden >= 0 else {}

    @property
    def num_hops(self) -> int:
        return len(self.layers) if self.uses_graph else 0

    def apply_layer(self, index: int, graph, h: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, graph, feat: Tensor) -> Tensor:
        h = self.dropout(feat) if self.input_dropout else feat
        for i in range(len(self.layers)):
            h = self.apply_layer(i, graph, h)
            if i < len(self.norms):
                h = self.dropout(torch.relu(self.norms[i](h)))
        return h


class MLP(LayerStack):
    """Multi-layer perceptron on node features alone (the GLNN student)."""

    uses_graph = False

    def __init__(self, in_dim: int, hidden: int, num_classes: int, layers: int,
                 dropout: float, norm: str) -> None:
        widths = [in_dim] + [hidden] * (layers - 1) + [num_classes]
        super().__init__(widths, dropout, norm)
        self.layers.extend(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def apply_layer(self, index: int, graph, h: Tensor) -> Tensor:
        return self.layers[index](h)


class GNN(LayerStack):
    """A stack of ``dgl.nn`` convolutions built by ``make_conv(in, out, is_last)``.

    Multi-head layers (GAT) return (N, heads, D): hidden layers concatenate the heads and
    the output layer averages them.
    """

    input_dropout = True

    def __init__(self, widths: list[int], dropout: float, norm: str,
                 make_conv: Callable[[int, int, bool], nn.Module], head_count: int = 1) -> None:
        super().__init__([widths[0]] + [w * head_count for w in widths[1:-1]] + [widths[-1]],
                         dropout, norm)
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            is_last = i == len(widths) - 2
            in_width = a if i == 0 else a * head_count
            self.layers.append(make_conv(in_width, b, is_last))

    def apply_layer(self, index: int, graph, h: Tensor) -> Tensor:
        out = self.layers[index](graph, h)
        if out.dim() == 3:  # (N, heads, D)
            out = out.mean(1) if index == len(self.layers) - 1 else out.flatten(1)
        return out


def _widths(in_dim: int, hidden: int, num_classes: int, layers: int) -> list[int]:
    if layers < 1:
        raise DglkdError(f"layers: must be at least 1 (got {layers})")
    return [in_dim] + [hidden] * (layers - 1) + [num_classes]


@MODELS.register("mlp")
def mlp(num_classes: int, in_features: int, hidden: int = 256, layers: int = 2,
        dropout: float = 0.0, norm: str = "none") -> nn.Module:
    return MLP(in_features, hidden, num_classes, layers, dropout, norm)


@MODELS.register("gcn")
def gcn(num_classes: int, in_features: int, hidden: int = 64, layers: int = 2,
        dropout: float = 0.5, norm: str = "none") -> nn.Module:
    """Kipf & Welling, ICLR 2017 (``dgl.nn.GraphConv``, symmetric normalisation)."""
    def make_conv(a: int, b: int, _last: bool) -> nn.Module:
        return dglnn.GraphConv(a, b, norm="both", allow_zero_in_degree=True)

    return GNN(_widths(in_features, hidden, num_classes, layers), dropout, norm, make_conv)


@MODELS.register("sage")
def sage(num_classes: int, in_features: int, hidden: int = 128, layers: int = 2,
         dropout: float = 0.5, norm: str = "none", aggregator: str = "mean") -> nn.Module:
    """Hamilton et al., NeurIPS 2017 (``dgl.nn.SAGEConv``); GLNN's teacher."""
    allowed = ("mean", "gcn", "pool", "lstm")
    if aggregator not in allowed:
        raise DglkdError(f"aggregator: unknown {aggregator!r}; allowed: {', '.join(allowed)}")

    def make_conv(a: int, b: int, _last: bool) -> nn.Module:
        return dglnn.SAGEConv(a, b, aggregator)

    return GNN(_widths(in_features, hidden, num_classes, layers), dropout, norm, make_conv)


@MODELS.register("gat")
def gat(num_classes: int, in_features: int, hidden: int = 8, layers: int = 2,
        dropout: float = 0.6, norm: str = "none", heads: int = 8, out_heads: int = 1,
        attn_dropout: float = 0.6, negative_slope: float = 0.2) -> nn.Module:
    """Veličković et al., ICLR 2018 (``dgl.nn.GATConv``); ``hidden`` is the width per head."""
    def make_conv(a: int, b: int, last: bool) -> nn.Module:
        return dglnn.GATConv(a, b, out_heads if last else heads, attn_drop=attn_dropout,
                             negative_slope=negative_slope, allow_zero_in_degree=True)

    return GNN(_widths(in_features, hidden, num_classes, layers), dropout, norm, make_conv,
               head_count=heads)

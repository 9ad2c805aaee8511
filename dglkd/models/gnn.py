"""Node-classification models: GNNs from ``dgl.nn`` and the graph-free MLP.

Every model is called as ``model(graph, feat)`` and returns logits, where ``graph`` is
either a whole DGLGraph (``feat``: one row per node, output: one row per node) or a list
of message-flow graphs ("blocks") from ``dgl.dataloading.NeighborSampler`` and
``dgl.dataloading.DataLoader``, DGL's convention: layer ``i`` runs on ``blocks[i]``,
``feat`` holds the rows of ``blocks[0].srcdata`` and the output the rows of
``blocks[-1]``'s destination nodes. GCN on blocks normalises by the whole graph's
out-degrees, so call :func:`attach_out_degrees` on the graph before sampling it. The MLP
ignores the graph (None, a graph or blocks), so it can run on the features of any set of
nodes alone.

DGL is imported when a GNN is built (:mod:`dglkd.deps`): the MLP, :class:`LayerStack` and
the registry entries need torch alone, and building a GNN without DGL is a one-line error.

Layers live in ``self.layers`` (``layers.0`` … ``layers.{L-1}``), so a hidden layer's
pre-activation output can be captured by that path (in block mode: the rows of that
block's destination nodes); ``feature_aliases`` names ``hidden`` (the last hidden layer)
for methods that want it without knowing the depth. Every model keeps the engine's
contract (:class:`dglkd.models.contract.NodeModel`): ``prepare_input`` → per layer
``apply_layer`` and ``finish_layer`` is its forward pass, so the engine can run it one layer
at a time over every node of a large graph (:mod:`dglkd.engine.inference`).
"""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from dglkd import deps
from dglkd.errors import DglkdError, quoted
from dglkd.models.registry import (MODELS, Aggregator, Depth, Heads, Norm, Rate, Slope,
                                   Width)
from dglkd.resources import TRAINING_BYTES_PER_PARAMETER, check_fits

if TYPE_CHECKING:
    import dgl

# What a model's ``graph`` argument may be: a whole graph, one block per layer, or None
# (the MLP only).
GraphInput = Union["dgl.DGLGraph", Sequence["dgl.DGLGraph"], None]

# The node field holding the whole graph's out-degrees, carried into every sampled block.
OUT_DEGREES = "_out_degree"


def attach_out_degrees(graph: dgl.DGLGraph) -> dgl.DGLGraph:
    """Store ``graph.out_degrees()`` in ``graph.ndata[OUT_DEGREES]`` and return ``graph``.

    GCN's symmetric normalisation divides each source node by the square root of its
    out-degree. A block only holds the edges to its batch's destination nodes, so its own
    out-degrees are too small; blocks sampled from a graph prepared here carry the true
    ones (DGL copies node data into blocks) and GCN uses those.
    """
    graph.ndata[OUT_DEGREES] = graph.out_degrees()
    return graph

NORMS = ("none", "batch", "layer")


def _norm(kind: str, width: int) -> nn.Module:
    if kind not in NORMS:
        raise DglkdError(f"norm: unknown {quoted(kind)}; allowed: {', '.join(NORMS)}")
    return {"none": nn.Identity, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[kind](width)


class LayerStack(nn.Module):
    """Layers with norm → ReLU → dropout between them; subclasses build ``self.layers``.

    ``input_columns``: when set, the model reads only the first this many columns of its
    input features (a teacher kept off the position features appended for its student).
    ``input_dropout``: the dropout rate on the input features (GNNs: ``dropout``).
    """

    uses_graph = True
    # GCN's convolutions divide by the whole graph's out-degrees (see GNN)
    source_degree_norm = False
    input_columns: Optional[int] = None

    def __init__(self, widths: list[int], dropout: float, norm: str,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        if len(widths) < 2:
            raise DglkdError("layers: must be at least 1")
        self.widths = widths
        self.dropout = nn.Dropout(dropout)
        self.input_dropout = nn.Dropout(input_dropout)
        self.norms = nn.ModuleList(_norm(norm, w) for w in widths[1:-1])
        self.layers = nn.ModuleList()
        last_hidden = len(widths) - 3
        self.feature_aliases = {"hidden": f"layers.{last_hidden}"} if last_hidden >= 0 else {}

    @property
    def num_hops(self) -> int:
        return len(self.layers) if self.uses_graph else 0

    def apply_layer(self, index: int, graph, h: Tensor) -> Tensor:
        raise NotImplementedError

    def graphs_per_layer(self, graph: GraphInput, feat: Tensor) -> list:
        """The graph each layer runs on: the whole graph for all, or ``blocks[i]`` for layer i."""
        if not self.uses_graph:
            return [None] * len(self.layers)
        if graph is None:
            raise DglkdError(f"graph: {type(self).__name__} needs a graph or blocks, got None")
        if not isinstance(graph, (list, tuple)):
            return [graph] * len(self.layers)
        if len(graph) != len(self.layers):
            raise DglkdError(f"blocks: got {len(graph)} blocks for a model of "
                             f"{len(self.layers)} layers (one block per layer)")
        if feat.shape[0] != graph[0].num_src_nodes():
            raise DglkdError(f"feat: {feat.shape[0]} rows, but blocks[0] has "
                             f"{graph[0].num_src_nodes()} source nodes")
        return list(graph)

    def prepare_input(self, feat: Tensor) -> Tensor:
        """What the first layer sees: its columns, after input dropout."""
        if self.input_columns is not None:
            feat = feat[:, :self.input_columns]
        return self.input_dropout(feat)

    def finish_layer(self, index: int, h: Tensor) -> Tensor:
        """Norm → ReLU → dropout after every layer but the last."""
        if index < len(self.norms):
            h = self.dropout(torch.relu(self.norms[index](h)))
        return h

    def forward(self, graph: GraphInput, feat: Tensor) -> Tensor:
        # Layer-wise inference calls the same three steps, so the two cannot drift apart.
        h = self.prepare_input(feat)
        for i, layer_graph in enumerate(self.graphs_per_layer(graph, feat)):
            h = self.finish_layer(i, self.apply_layer(i, layer_graph, h))
        return h


class MLP(LayerStack):
    """Multi-layer perceptron on node features alone (the GLNN student)."""

    uses_graph = False

    def __init__(self, in_dim: int, hidden: int, num_classes: int, layers: int,
                 dropout: float, norm: str, input_dropout: float = 0.0) -> None:
        widths = _widths(in_dim, hidden, num_classes, layers)
        super().__init__(widths, dropout, norm, input_dropout)
        self.layers.extend(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def apply_layer(self, index: int, graph, h: Tensor) -> Tensor:
        return self.layers[index](h)


class GNN(LayerStack):
    """A stack of ``dgl.nn`` convolutions built by ``make_conv(in, out, is_last)``.

    Multi-head layers (GAT) return (N, heads, D): hidden layers concatenate the heads and
    the output layer averages them. ``source_degree_norm`` marks convolutions that divide
    source features by the square root of their out-degree (GCN's ``norm="both"``): on a
    block that degree is taken from ``srcdata[OUT_DEGREES]`` (see
    :func:`attach_out_degrees`).
    """

    def __init__(self, widths: list[int], dropout: float, norm: str,
                 make_conv: Callable[[int, int, bool], nn.Module], head_count: int = 1,
                 source_degree_norm: bool = False) -> None:
        super().__init__([widths[0]] + [w * head_count for w in widths[1:-1]] + [widths[-1]],
                         dropout, norm, input_dropout=dropout)
        self.source_degree_norm = source_degree_norm
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            is_last = i == len(widths) - 2
            in_width = a if i == 0 else a * head_count
            self.layers.append(make_conv(in_width, b, is_last))

    def apply_layer(self, index: int, graph, h: Tensor) -> Tensor:
        if self.source_degree_norm and graph.is_block:
            # The conv divides by sqrt(block out-degree); rescaling the source rows turns
            # that into sqrt(whole-graph out-degree), so blocks reproduce the full graph.
            h = h * _degree_correction(graph).to(h)[:, None]
        out = self.layers[index](graph, h)
        if out.dim() == 3:  # (N, heads, D)
            out = out.mean(1) if index == len(self.layers) - 1 else out.flatten(1)
        return out


def _degree_correction(block: dgl.DGLGraph) -> Tensor:
    """sqrt(block out-degree / whole-graph out-degree) per source node, both clamped at 1
    as ``GraphConv`` clamps them."""
    if OUT_DEGREES not in block.srcdata:
        raise DglkdError(
            f"blocks: srcdata has no {OUT_DEGREES!r} (the whole graph's out-degrees GCN "
            "normalises by); call dglkd.models.gnn.attach_out_degrees(graph) before sampling"
        )
    whole = block.srcdata[OUT_DEGREES].double().clamp(min=1)
    local = block.out_degrees().double().clamp(min=1)
    return (local / whole).sqrt()


def _widths(in_dim: int, hidden: int, num_classes: int, layers: int, heads: int = 1) -> list[int]:
    """Layer widths, after checking the model fits this machine: DGL's convs allocate
    their weights with ``torch.Tensor(a, b)``, which ignores ``torch.device("meta")``, so
    the size must be known before a single layer is built. An upper bound: two weight
    matrices per layer (SAGE's self and neighbour weights), ``heads`` on both sides."""
    widths = [in_dim] + [hidden] * (layers - 1) + [num_classes]
    size = 2 * heads * heads * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    check_fits(size * TRAINING_BYTES_PER_PARAMETER, f"training about {size:,} parameters",
               "lower hidden or layers")
    return widths


def _dgl_nn(model: str) -> ModuleType:
    """``dgl.nn``, or the one-line error naming the model that needs it."""
    return deps.dgl(f"model {model!r} (a dgl.nn GNN)").nn


@MODELS.register("mlp")
def mlp(num_classes: int, in_features: int, hidden: Width = 256, layers: Depth = 2,
        dropout: Rate = 0.0, norm: Norm = "none", input_dropout: Rate = 0.0) -> nn.Module:
    """GLNN's MLP: dropout between layers; ``input_dropout`` also drops input features
    (0: GLNN's and NOSMOG's MLP)."""
    return MLP(in_features, hidden, num_classes, layers, dropout, norm, input_dropout)


@MODELS.register("gcn")
def gcn(num_classes: int, in_features: int, hidden: Width = 64, layers: Depth = 2,
        dropout: Rate = 0.5, norm: Norm = "none") -> nn.Module:
    """Kipf & Welling, ICLR 2017 (``dgl.nn.GraphConv``, symmetric normalisation)."""
    dglnn = _dgl_nn("gcn")

    def make_conv(a: int, b: int, _last: bool) -> nn.Module:
        return dglnn.GraphConv(a, b, norm="both", allow_zero_in_degree=True)

    return GNN(_widths(in_features, hidden, num_classes, layers), dropout, norm, make_conv,
               source_degree_norm=True)


@MODELS.register("sage")
def sage(num_classes: int, in_features: int, hidden: Width = 128, layers: Depth = 2,
         dropout: Rate = 0.5, norm: Norm = "none", aggregator: Aggregator = "mean") -> nn.Module:
    """Hamilton et al., NeurIPS 2017 (``dgl.nn.SAGEConv``); GLNN's teacher."""
    dglnn = _dgl_nn("sage")

    def make_conv(a: int, b: int, _last: bool) -> nn.Module:
        return dglnn.SAGEConv(a, b, aggregator)

    return GNN(_widths(in_features, hidden, num_classes, layers), dropout, norm, make_conv)


@MODELS.register("gat")
def gat(num_classes: int, in_features: int, hidden: Width = 8, layers: Depth = 2,
        dropout: Rate = 0.6, norm: Norm = "none", heads: Heads = 8, out_heads: Heads = 1,
        attn_dropout: Rate = 0.6, negative_slope: Slope = 0.2) -> nn.Module:
    """Veličković et al., ICLR 2018 (``dgl.nn.GATConv``); ``hidden`` is the width per head."""
    dglnn = _dgl_nn("gat")

    def make_conv(a: int, b: int, last: bool) -> nn.Module:
        return dglnn.GATConv(a, b, out_heads if last else heads, attn_drop=attn_dropout,
                             negative_slope=negative_slope, allow_zero_in_degree=True)

    return GNN(_widths(in_features, hidden, num_classes, layers, heads), dropout, norm,
               make_conv, head_count=heads)

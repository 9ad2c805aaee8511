"""What the engine asks of a node-classification model, declared once.

The engine trains, samples for and infers with a node model through this contract alone:
whether it reads the graph at all (an MLP does not: its batches are plain node batches),
how many hops of neighbours one output row needs (one block per layer), whether its
convolutions need the whole graph's out-degrees on sampled blocks (GCN), and its layers
one at a time (layer-wise inference over every node, as DGL's ``SAGE.inference`` and PyG's
``model.inference(loader)`` keep the layer API apart from the loader). dglkd's own models
(:class:`dglkd.models.gnn.LayerStack`) implement it; a user's registered model must too.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from dglkd.errors import DglkdError


@runtime_checkable
class NodeModel(Protocol):
    """A model called as ``model(graph_or_blocks_or_None, feat)`` that returns logits.

    ``widths``: the input width and every layer's output width (the last: the classes);
    ``feature_aliases``: names of hidden features (``hidden``) → layer paths (``layers.i``).
    ``prepare_input`` → for each layer ``apply_layer`` then ``finish_layer`` is exactly the
    forward pass, so the engine can run it one layer at a time over every node.
    """

    uses_graph: bool
    source_degree_norm: bool
    widths: list[int]
    layers: nn.ModuleList
    feature_aliases: dict[str, str]

    @property
    def num_hops(self) -> int: ...

    def prepare_input(self, feat: Tensor) -> Tensor: ...

    def apply_layer(self, index: int, graph, h: Tensor) -> Tensor: ...

    def finish_layer(self, index: int, h: Tensor) -> Tensor: ...


def node_model(model: nn.Module, key: str) -> NodeModel:
    """``model`` itself once it is known to keep the contract; a one-line error naming
    ``key`` (``teacher.model``, ``student.model``) otherwise."""
    if not isinstance(model, NodeModel):
        raise DglkdError(f"{key}: {type(model).__name__} is not a node model the engine can "
                         "train on a graph (it needs uses_graph, num_hops, widths, layers, "
                         "feature_aliases and prepare_input/apply_layer/finish_layer: "
                         "subclass dglkd.models.gnn.LayerStack)")
    return model


__all__ = ["NodeModel", "node_model"]

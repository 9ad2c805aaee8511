"""Holistic knowledge distillation (HKD).

On kNN instance graphs with the TAGConv encoder (the default) HKD runs in pure torch; DGL
is imported only for the other encoders, the batch's own graph or ``graph_backend: dgl``.
"""
from __future__ import annotations

from typing import Any, Literal

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dglkd import deps
from dglkd.errors import DglkdError
from dglkd.graphs import dense_knn_index, knn_instance_graph, mean_aggregate_dense
from dglkd.methods.base import DistillBatch, MethodContext, register_method, require_graph
from dglkd.methods.memory import (
    SIDES,
    ContrastiveDistill,
    ContrastiveParams,
    ContrastView,
    side_knowledge,
)


class HKDParams(ContrastiveParams):
    momentum: float = pydantic.Field(0.9, ge=0.0, le=1.0, description="memory-bank momentum")
    relation: Literal["knn", "native"] = pydantic.Field(
        "knn", description="the instance graph: kNN over the batch, or the batch's own graph")
    k: int = pydantic.Field(8, ge=1, le=1024,
                            description="neighbours per instance of the kNN graph")
    knn_feature: str = pydantic.Field("logits", description="what the kNN graph is built on")
    knn_metric: Literal["cosine", "euclidean"] = pydantic.Field(
        "cosine", description="distance of the kNN graph")
    knn_softmax: bool = pydantic.Field(True, description="softmax the kNN feature first")
    knn_include_self: bool = pydantic.Field(True, description="an instance counts as one of "
                                                              "its k neighbours")
    encoder: Literal["tagconv", "graphconv", "sage", "gat"] = pydantic.Field(
        "tagconv", description="the dgl.nn layer that makes holistic embeddings")
    encoder_hops: int = pydantic.Field(1, ge=1, le=16, description="TAGConv hops")
    encoder_heads: int = pydantic.Field(1, ge=1, le=64, description="GAT heads")
    graph_backend: Literal["auto", "dense", "dgl"] = pydantic.Field(
        "auto", description="kNN graph and encoder in pure torch (dense) or through DGL")
    positive_mix: float = pydantic.Field(
        0.75, ge=0.0, le=1.0, description="memory share of the graph term's positive")
    individual_positive_mix: float = pydantic.Field(
        1.0, ge=0.0, le=1.0, description="memory share of the individual term's positive")


def _dgl_conv(kind: str, dim: int, hops: int, heads: int, what: str) -> nn.Module:
    dglnn = deps.dgl(what).nn
    if kind == "tagconv":
        return dglnn.TAGConv(dim, dim, k=hops)
    if kind == "graphconv":
        return dglnn.GraphConv(dim, dim, allow_zero_in_degree=True)
    if kind == "sage":
        return dglnn.SAGEConv(dim, dim, "mean")
    return dglnn.GATConv(dim, dim, heads, allow_zero_in_degree=True)


class TAGWeights(nn.Module):
    """The parameters of ``dgl.nn.TAGConv(dim, dim, k=hops)`` without DGL: one
    ``lin`` over the ``hops + 1`` concatenated propagation steps, initialised as TAGConv
    initialises it (torch's Linear, then Xavier-normal weights with ReLU's gain), so the
    dense and the DGL encoder share state-dict keys and, from one seed, their weights."""

    def __init__(self, dim: int, hops: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim * (hops + 1), dim)
        nn.init.xavier_normal_(self.lin.weight, gain=nn.init.calculate_gain("relu"))


class GraphEncoder(nn.Module):
    """``h = normalise(conv(graph, z))`` with one ``dgl.nn`` layer (GAT heads averaged).

    For TAGConv, :meth:`dense` computes the same thing on a kNN index without DGL: every
    in-degree of a kNN graph is equal, so TAGConv's symmetric normalisation is a mean and
    one hop is ``lin([z ; mean of z over the neighbours])`` with the layer's own weights.
    ``dense=True`` builds only those weights (:class:`TAGWeights`, no DGL); ``what`` names
    the setting that needs DGL otherwise, for the error raised without it.
    """

    def __init__(self, kind: str, dim: int, hops: int = 1, heads: int = 1,
                 dense: bool = False, what: str = "a dgl.nn graph encoder") -> None:
        super().__init__()
        self.kind, self.hops = kind, hops
        self.conv = TAGWeights(dim, hops) if dense else _dgl_conv(kind, dim, hops, heads, what)

    def forward(self, graph: dgl.DGLGraph, z: Tensor) -> Tensor:
        out = self.conv(graph, z)
        if out.dim() == 3:
            out = out.mean(dim=1)
        return F.normalize(out, dim=1)

    def dense(self, z: Tensor, index: Tensor) -> Tensor:
        hops = [z]
        for _ in range(self.hops):
            hops.append(mean_aggregate_dense(hops[-1], index))
        return F.normalize(self.conv.lin(torch.cat(hops, dim=1)), dim=1)


@register_method("hkd")
class HKD(ContrastiveDistill):
    """Zhou et al., "Distilling Holistic Knowledge with Graph Neural Networks", ICCV 2021.

    Per batch: individual knowledge ``z = normalise(Linear(feature))`` (128-d, one embed
    per network); per network an instance graph, the k = 8 nearest rows by cosine between
    softmax(logits), self counted, edges neighbour → node (``relation="native"`` uses the
    batch's own graph instead: all nodes of a graph as one batch); holistic knowledge
    ``h = normalise(GNN(graph, z))`` with one GNN per network (TAGConv K=1 by default,
    run densely in pure torch unless ``graph_backend="dgl"``). The term ``hkd = L_HKD``;
    the paper's recipe is ``ce + kd(T=4) + 3·hkd`` ("HKD+KD"; without ``kd`` it is plain
    "HKD"). ``L_HKD`` sums four InfoNCE terms (temperature 0.07): student →
    teacher and teacher → student, on ``z`` and on ``h``; the ``h`` term is skipped when
    a kNN batch has fewer than k rows. As in the authors' code: the memory banks hold
    ``z`` (momentum 0.9); the positive of the ``z`` term is the other network's memory row
    of the instance (``individual_positive_mix=1``), that of the ``h`` term the
    stop-gradient ``normalise(0.75·memory + 0.25·current h)`` of the other network
    (``positive_mix``); the teacher's embed and GNN are trained, its backbone is not.

    Negatives. The authors read an anchor's negatives from its *own* network's memory
    (student anchors against old student embeddings) while its positive comes from the
    other network; CRD reads both from the *other* network. The default here,
    ``negatives_from="other"``, is CRD's: positive and negatives then lie in one
    embedding space, so the softmax picks the anchor's instance among the other
    network's instances, the InfoNCE bound CRD derives; ``"own"`` reproduces the
    authors' code. Negatives are drawn from other classes (``context.instance_labels``),
    16,384 capped by the dataset size, as one pool shared by the batch with same-class
    entries masked per anchor (:mod:`dglkd.methods.memory`) instead of 16,384 gathered
    per anchor; ``negatives="batch"`` uses the batch's other-class rows instead of a
    memory bank (small data). Unlike the authors' code, the memory is also updated on
    batches too small for the graph term.
    """

    Params = HKDParams
    paper_recipe = {"ce": 1.0, "kd": 1.0, "hkd": 3.0}

    def __init__(self, params: HKDParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self.dense = self._dense_backend(params)
        what = (f"method hkd with graph_backend {params.graph_backend!r}, relation "
                f"{params.relation!r}, encoder {params.encoder!r} (the dense path needs "
                "relation 'knn', encoder 'tagconv')")
        self.encoder = nn.ModuleDict({
            side: GraphEncoder(params.encoder, params.embed_dim, params.encoder_hops,
                               params.encoder_heads, dense=self.dense, what=what)
            for side in SIDES
        })

    @staticmethod
    def _dense_backend(params: HKDParams) -> bool:
        dense_ok = params.relation == "knn" and params.encoder == "tagconv"
        if params.graph_backend == "dense" and not dense_ok:
            raise DglkdError(
                "method.graph_backend: 'dense' needs relation 'knn' and encoder 'tagconv' "
                f"(got {params.relation!r}, {params.encoder!r}); use 'dgl' or 'auto'"
            )
        return params.graph_backend == "dense" or (params.graph_backend == "auto" and dense_ok)

    def required_features(self) -> tuple[list[str], list[str]]:
        student, teacher = super().required_features()
        if self.params.relation == "knn" and self.params.knn_feature != "logits":
            return [*student, self.params.knn_feature], [*teacher, self.params.knn_feature]
        return student, teacher

    def reads_graph(self) -> bool:
        return self.params.relation == "native"

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        return {"hkd": self.holistic_loss(batch)}

    def holistic_loss(self, batch: DistillBatch) -> Tensor:
        """``L_HKD``: the individual term plus (when it applies) the graph term."""
        view = self.view(batch)
        targets = self.targets(view)
        loss = targets.loss(view.z, view.z, self.params.individual_positive_mix)
        if self._graph_term_applies(len(view)):
            h = self.holistic(batch, view)
            loss = loss + targets.loss(h, h, self.params.positive_mix)
        self.remember(view)
        return loss

    def holistic(self, batch: DistillBatch, view: ContrastView | None = None) -> dict[str, Tensor]:
        """Holistic embeddings ``h`` per network of the rows that enter the loss."""
        view = self.view(batch) if view is None else view
        if self.params.relation == "native":
            graph = self._native_graph(batch)
            return {side: self.encoder[side](graph, view.z[side]) for side in SIDES}
        return {side: self._knn_holistic(batch, side, view.z[side]) for side in SIDES}

    def embeddings(self, batch: DistillBatch) -> dict[str, Tensor]:
        """The holistic embeddings of both networks, for TensorBoard's projector."""
        return {f"{side}_holistic": h for side, h in self.holistic(batch).items()}

    def _knn_holistic(self, batch: DistillBatch, side: str, z: Tensor) -> Tensor:
        p = self.params
        points = batch.distill_rows(side_knowledge(batch, side).feat(p.knn_feature))
        options = dict(k=p.k, metric=p.knn_metric, include_self=p.knn_include_self,
                       softmax=p.knn_softmax)
        if self.dense:
            return self.encoder[side].dense(z, dense_knn_index(points, **options))
        return self.encoder[side](knn_instance_graph(points, **options), z)

    def _native_graph(self, batch: DistillBatch) -> Any:
        graph = require_graph(batch, self.name)
        if batch.distill_mask is None:
            return graph
        return graph.subgraph(batch.distill_mask)

    def _graph_term_applies(self, rows: int) -> bool:
        return rows >= (1 if self.params.relation == "native" else self.params.k)

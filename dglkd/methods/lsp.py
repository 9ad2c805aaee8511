"""Local structure preserving (LSP) distillation over a graph of instances.

Cost: no per-edge E × D tensor is ever built. Dot-product kernels (and rbf, through
‖a − b‖² = ‖a‖² + ‖b‖² − 2a·b) are one SDDMM forward and two SpMMs backward; the l1
kernel, which has no such identity, runs block by block. The softmax over in-edges and the
KL reduce over each node's in-edges, with a closed-form gradient: with DGL's edge
reductions on a DGLGraph (the batch's own graph, ``graph_backend: dgl``), with torch's
scatter reductions on the union of kNN instance graphs held as edge lists (the default for
image batches: no DGL needed). The kernels are torch's sparse CSR products on both.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Literal

import pydantic
import torch
from torch import Tensor

from dglkd import deps
from dglkd.errors import DglkdError
from dglkd.graphs import dense_knn_index, knn_instance_graph, union_edges, union_graph
from dglkd.methods.base import (
    DistillBatch,
    DistillMethod,
    MethodContext,
    MethodParams,
    register_method,
    require_graph,
)

if TYPE_CHECKING:
    import dgl

Kernel = Literal["l1", "linear", "poly", "rbf", "cosine"]

# Edges per block of the L1 kernel: bounds its working memory to a few (block × D) tensors
# instead of the E × D difference tensor, and keeps each block cache-sized on a CPU.
L1_BLOCK = 1 << 14


class LSPParams(MethodParams):
    """Features by name; the kernel and its constants; ``graph``: the batch's own graph or
    the union of both networks' ``k``-NN graphs (``knn_*`` as in dglkd.graphs)."""

    student_feature: str = pydantic.Field("hidden", description="student feature (module "
                                                                "path or alias)")
    teacher_feature: str = pydantic.Field("hidden", description="teacher feature, likewise")
    kernel: Kernel = pydantic.Field("l1", description="similarity kernel between neighbours")
    l1_scale: float = pydantic.Field(100.0, gt=0, le=1e6,
                                     description="l1 kernel: exp(−‖·‖₁/scale)")
    rbf_gamma: float = pydantic.Field(1.0, gt=0, le=1e6,
                                      description="rbf kernel: exp(−γ‖·‖²)")
    poly_degree: int = pydantic.Field(2, ge=1, le=16, description="poly kernel degree d")
    poly_coef: float = pydantic.Field(1.0, description="poly kernel constant c")
    kernel_as_logit: bool = pydantic.Field(
        True, description="softmax the kernel value itself (the authors' code, default) "
                          "instead of its logarithm (the paper's normalised kernel)")
    average_over: Literal["all", "with_neighbours"] = pydantic.Field(
        "all", description="the KL's mean over all nodes (the authors'; a node without "
                           "in-neighbours contributes 0) or over nodes with in-neighbours")
    graph: Literal["native", "union_knn"] = pydantic.Field(
        "native", description="the batch's own graph, or the union of both kNN graphs")
    k: int = pydantic.Field(8, ge=1, le=1024, description="neighbours of the kNN graphs")
    knn_metric: Literal["cosine", "euclidean"] = pydantic.Field(
        "cosine", description="distance of the kNN graphs")
    knn_include_self: bool = pydantic.Field(False, description="self among the k neighbours")
    graph_backend: Literal["auto", "dense", "dgl"] = pydantic.Field(
        "auto", description="union_knn: the kNN graphs as torch edge lists (dense, auto) or "
                            "as DGLGraphs (dgl); a native graph is always a DGLGraph")


@dataclass
class EdgeIndex:
    """A graph's edges three ways: by edge id, grouped by destination (``in_``, the CSC
    order) and grouped by source (``out_``, the CSR order); the ``*_eids`` map each group
    order back to edge ids. DGL caches both formats on the graph, so this is cheap to
    rebuild every step on a fixed graph."""

    num_nodes: int
    in_ptr: Tensor
    in_src: Tensor
    in_dst: Tensor
    in_eids: Tensor
    out_ptr: Tensor
    out_dst: Tensor
    out_eids: Tensor

    @classmethod
    def of(cls, graph: dgl.DGLGraph) -> "EdgeIndex":
        in_ptr, in_src, in_eids = (t.long() for t in graph.adj_tensors("csc"))
        out_ptr, out_dst, out_eids = (t.long() for t in graph.adj_tensors("csr"))
        nodes = torch.arange(graph.num_nodes(), device=in_ptr.device)
        in_dst = nodes.repeat_interleave(in_ptr.diff())
        return cls(graph.num_nodes(), in_ptr, in_src, in_dst, in_eids, out_ptr, out_dst, out_eids)

    @classmethod
    def grouped(cls, src: Tensor, dst: Tensor, num_nodes: int) -> "EdgeIndex":
        """The index of edges ``src[e] → dst[e]`` already grouped by destination, sources
        ascending within it (:func:`dglkd.graphs.union_edges`' order): edge ids are that
        order, so ``in_eids`` is the identity."""
        eids = torch.arange(len(src), device=src.device)
        by_source = torch.sort(src, stable=True).indices
        return cls(num_nodes, _pointers(dst, num_nodes), src, dst, eids,
                   _pointers(src, num_nodes), dst[by_source], by_source)

    def matrix(self, by: str, values: Tensor) -> Tensor:
        """Sparse N × N CSR matrix with rows = destinations (``by="in"``) or sources
        (``"out"``) and ``values`` (given in edge-id order) as entries."""
        ptr, cols, eids = (
            (self.in_ptr, self.in_src, self.in_eids) if by == "in"
            else (self.out_ptr, self.out_dst, self.out_eids)
        )
        with warnings.catch_warnings():  # torch flags sparse CSR as beta once per process
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                ptr, cols, values[eids], (self.num_nodes, self.num_nodes)
            )

    def to_eid_order(self, in_order: Tensor) -> Tensor:
        return torch.empty_like(in_order).index_copy_(0, self.in_eids, in_order)


class _EdgeDot(torch.autograd.Function):
    """h_src · h_dst per edge as a sampled dense-dense product (SDDMM); the backward is two
    sparse-dense products (SpMM). No E × D tensor exists in either direction.

    torch's CSR kernels rather than DGL's ``u_dot_v``: on CPU (DGL 2.1, 1 M edges, D = 128)
    ``u_dot_v`` took 4× and its backward (``u_mul_e_sum``) 5× as long as these.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, edges: EdgeIndex) -> Tensor:
        ctx.save_for_backward(h)
        ctx.edges = edges
        pattern = edges.matrix("in", h.new_ones(len(edges.in_eids)))
        dots = torch.sparse.sampled_addmm(pattern, h, h.t(), beta=0.0)
        return edges.to_eid_order(dots.values())

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        (h,) = ctx.saved_tensors
        edges = ctx.edges
        # d/dh_dst = sum over in-edges of g·h_src; d/dh_src = sum over out-edges of g·h_dst
        grad = edges.matrix("in", grad_out) @ h + edges.matrix("out", grad_out) @ h
        return grad, None


class _EdgeL1(torch.autograd.Function):
    """‖h_src − h_dst‖₁ per edge, block by block in destination order (so the destination
    side is read and written sequentially); the backward recomputes each block's signs, so
    no E × D tensor is stored."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, edges: EdgeIndex) -> Tensor:
        ctx.save_for_backward(h)
        ctx.edges = edges
        out = h.new_empty(len(edges.in_eids))
        for lo, src, dst in _blocks(edges):
            out[lo:lo + len(src)] = (h.index_select(0, src) - h.index_select(0, dst)).abs_().sum(1)
        return edges.to_eid_order(out)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        (h,) = ctx.saved_tensors
        edges = ctx.edges
        grad_in_order = grad_out[edges.in_eids]
        grad = torch.zeros_like(h)
        for lo, src, dst in _blocks(edges):
            step = (h.index_select(0, src) - h.index_select(0, dst)).sign_()
            step.mul_(grad_in_order[lo:lo + len(src), None])
            grad.index_add_(0, src, step)
            grad.index_add_(0, dst, step, alpha=-1)
        return grad, None


def _pointers(nodes: Tensor, num_nodes: int) -> Tensor:
    """CSR row pointers of edges grouped by ``nodes``."""
    counts = torch.bincount(nodes, minlength=num_nodes)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _blocks(edges: EdgeIndex) -> Iterator[tuple[int, Tensor, Tensor]]:
    for lo in range(0, len(edges.in_src), L1_BLOCK):
        yield lo, edges.in_src[lo:lo + L1_BLOCK], edges.in_dst[lo:lo + L1_BLOCK]


def _edge_sq_dist(edges: EdgeIndex, h: Tensor) -> Tensor:
    """‖h_src − h_dst‖² as ‖h_src‖² + ‖h_dst‖² − 2 h_src·h_dst (clamped at 0 against
    rounding), so it costs one SDDMM."""
    sq = h.pow(2).sum(1)
    src, dst = edges.in_src, edges.in_dst
    sums = edges.to_eid_order(sq[src] + sq[dst])
    return (sums - 2 * _EdgeDot.apply(h, edges)).clamp_min(0)


def edge_logits(edges: EdgeIndex, h: Tensor, params: LSPParams) -> Tensor:
    """The softmax logit of every edge j → i: the log of the kernel for the distance kernels
    (``l1``: −‖·‖₁/scale, ``rbf``: −γ‖·‖²) unless ``kernel_as_logit``, the kernel itself for
    the dot-product kernels."""
    kernel = params.kernel
    if kernel == "cosine":
        return _EdgeDot.apply(torch.nn.functional.normalize(h, dim=1), edges)
    if kernel in ("linear", "poly"):
        dot = _EdgeDot.apply(h, edges)
        return dot if kernel == "linear" else (dot + params.poly_coef) ** params.poly_degree
    if kernel == "l1":
        neg_dist = -_EdgeL1.apply(h, edges) / params.l1_scale
    else:
        neg_dist = -params.rbf_gamma * _edge_sq_dist(edges, h)
    return neg_dist.exp() if params.kernel_as_logit else neg_dist


class InEdges:
    """Reductions over every node's in-edges, of values given in edge-id order; the two
    implementations below give the same numbers (to rounding)."""

    num_nodes: int
    dst: Tensor  # destination node of every edge, in edge-id order

    def max(self, values: Tensor) -> Tensor:
        """Per node, the largest value of its in-edges (0 without in-edges)."""
        raise NotImplementedError

    def sum(self, values: Tensor) -> Tensor:
        raise NotImplementedError

    def softmax(self, logits: Tensor) -> Tensor:
        return self.log_softmax(logits).exp()

    def log_softmax(self, logits: Tensor) -> Tensor:
        """log softmax of edge logits over each node's in-edges, stable where probabilities
        underflow (log ∘ softmax is not). No gradient: _InNeighbourKL provides it."""
        shifted = logits - self.max(logits)[self.dst]
        total = self.sum(shifted.exp())
        # nodes without in-edges have total 0; the clamp keeps their (unused) log finite
        return shifted - total.clamp_min(torch.finfo(total.dtype).tiny).log()[self.dst]

    def has_in_edges(self) -> Tensor:
        return torch.bincount(self.dst, minlength=self.num_nodes) > 0


class DGLInEdges(InEdges):
    """DGL's edge reductions on a DGLGraph (and DGL's own edge softmax)."""

    def __init__(self, graph: dgl.DGLGraph) -> None:
        self.dgl = deps.dgl("lsp on a DGLGraph")
        self.graph, self.num_nodes = graph, graph.num_nodes()
        self.dst = graph.edges()[1].long()

    def max(self, values: Tensor) -> Tensor:
        return self.dgl.ops.copy_e_max(self.graph, values.unsqueeze(1)).squeeze(1)

    def sum(self, values: Tensor) -> Tensor:
        return self.dgl.ops.copy_e_sum(self.graph, values.unsqueeze(1)).squeeze(1)

    def softmax(self, logits: Tensor) -> Tensor:
        return self.dgl.nn.functional.edge_softmax(self.graph, logits)


class TorchInEdges(InEdges):
    """The same reductions with torch's scatter operations on an edge list."""

    def __init__(self, dst: Tensor, num_nodes: int) -> None:
        self.dst, self.num_nodes = dst, num_nodes

    def max(self, values: Tensor) -> Tensor:
        return values.new_zeros(self.num_nodes).scatter_reduce(
            0, self.dst, values, "amax", include_self=False)

    def sum(self, values: Tensor) -> Tensor:
        return values.new_zeros(self.num_nodes).index_add(0, self.dst, values)


class _InNeighbourKL(torch.autograd.Function):
    """Per node i: KL(p_t ‖ softmax(ℓ_s)) over i's in-edges, from the student's edge logits
    ℓ_s and the teacher's edge probabilities p_t. Its gradient is the closed form
    ∂KL_i/∂ℓ_s,e = p_s,e − p_t,e, cheaper than differentiating the log-softmax."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, p_teacher: Tensor, in_edges: InEdges) -> Tensor:
        log_p_student = in_edges.log_softmax(logits)
        # xlogy: an underflowed teacher probability contributes 0, not 0 · log 0
        per_edge = torch.xlogy(p_teacher, p_teacher) - p_teacher * log_p_student
        ctx.save_for_backward(log_p_student, p_teacher)
        ctx.dst = in_edges.dst
        return in_edges.sum(per_edge)

    @staticmethod
    def backward(ctx: Any, grad_node: Tensor) -> tuple[Tensor, None, None]:
        log_p_student, p_teacher = ctx.saved_tensors
        return grad_node[ctx.dst] * (log_p_student.exp() - p_teacher), None, None


def local_structure_kl(
    graph: dgl.DGLGraph, student: Tensor, teacher: Tensor, params: LSPParams,
    node_mask: Tensor | None = None,
) -> Tensor:
    """mean over nodes i (within ``node_mask``; only those with in-edges when
    ``params.average_over`` is ``with_neighbours``) of KL(S^t_i ‖ S^s_i), where S_i =
    softmax over i's in-neighbours j of kernel(h_i, h_j); a node without in-edges has
    KL 0."""
    return structure_kl(EdgeIndex.of(graph), DGLInEdges(graph), student, teacher, params,
                        node_mask)


def structure_kl(edges: EdgeIndex, in_edges: InEdges, student: Tensor, teacher: Tensor,
                 params: LSPParams, node_mask: Tensor | None = None) -> Tensor:
    """:func:`local_structure_kl` on a graph given as its edge index and in-edge
    reductions (a DGLGraph's or an edge list's)."""
    with torch.no_grad():
        p_teacher = in_edges.softmax(edge_logits(edges, teacher.flatten(1), params))
    logits = edge_logits(edges, student.flatten(1), params)
    per_node = _InNeighbourKL.apply(logits, p_teacher, in_edges)
    keep = (in_edges.has_in_edges() if params.average_over == "with_neighbours"
            else torch.ones(in_edges.num_nodes, dtype=torch.bool, device=per_node.device))
    if node_mask is not None:
        keep = keep & node_mask
    return per_node[keep].mean() if bool(keep.any()) else per_node.sum() * 0.0


def union_knn_kl(student: Tensor, teacher: Tensor, params: LSPParams) -> Tensor:
    """LSP on the union of the teacher's and the student's kNN graphs, in pure torch: the
    graphs are :func:`dglkd.graphs.dense_knn_index` neighbour lists (the student's built on
    its detached features), joined as edge lists; equal to :func:`local_structure_kl` on
    :func:`dglkd.graphs.union_graph` of the two :func:`dglkd.graphs.knn_instance_graph`."""
    options = dict(metric=params.knn_metric, include_self=params.knn_include_self)
    edge_lists = [_knn_edges(dense_knn_index(x, params.k, **options))
                  for x in (teacher.flatten(1), student.detach().flatten(1))]
    src, dst = union_edges(*edge_lists, num_nodes=len(student))
    return structure_kl(EdgeIndex.grouped(src, dst, len(student)),
                        TorchInEdges(dst, len(student)), student, teacher, params)


def _knn_edges(index: Tensor) -> tuple[Tensor, Tensor]:
    """(src, dst) of a kNN neighbour index: an edge from each neighbour to its node."""
    nodes = torch.arange(len(index), device=index.device)
    return index.reshape(-1), nodes.repeat_interleave(index.shape[1])


@register_method("lsp")
class LSP(DistillMethod):
    """Yang et al., "Distilling Knowledge from Graph Convolutional Networks", CVPR 2020.

    For every node i, a distribution over its in-neighbours j, S_i = softmax_j(kernel(h_i,
    h_j)), on the teacher's and on the student's features (widths may differ);
    ``lsp = mean_i KL(S^t_i ‖ S^s_i)``; the paper's recipe is ``ce + lsp``. Kernels:
    ``l1`` (the authors': exp(−‖h_i − h_j‖₁ / l1_scale)), ``rbf`` exp(−γ‖h_i − h_j‖²),
    ``linear`` h_i·h_j, ``poly`` (h_i·h_j + c)^d, ``cosine``.

    Defaults reproduce the authors' released code: ``kernel_as_logit: true`` feeds the
    distance kernel's value itself to the softmax (their edge_softmax runs over
    exp(−‖·‖₁/100)); ``false`` feeds its logarithm, so that S_i is the normalised kernel
    as the paper writes it. ``average_over: all`` averages the KL over all nodes (within
    the distill mask), a node without in-neighbours contributing 0, as their mean over
    the graph's nodes does; ``with_neighbours`` averages over nodes that have some. The
    authors distil for the first 30 of 500 epochs and train on CE alone afterwards: in a
    recipe, ``lsp: {weight: w, schedule: {until: 30}}`` (configs/ppi_gat_lsp.yaml).

    The graph is ``batch.graph`` (``graph: native``) or, for image batches and other dynamic
    graphs (``graph: union_knn``), the union of the teacher's and the student's k-nearest-
    neighbour instance graphs built on the distilled features, as the paper does for DGCNN.
    The union is held as torch edge lists (``graph_backend: auto`` or ``dense``, no DGL) or
    built as DGLGraphs (``dgl``); both give the same loss and gradients.
    """

    Params = LSPParams
    paper_recipe = {"ce": 1.0, "lsp": 1.0}

    def __init__(self, params: LSPParams, context: MethodContext) -> None:
        super().__init__(params, context)
        if params.graph == "native" and params.graph_backend == "dense":
            raise DglkdError("method.graph_backend: 'dense' needs graph 'union_knn' (a native "
                             "graph is a DGLGraph); use 'dgl' or 'auto'")
        self.dense = params.graph == "union_knn" and params.graph_backend != "dgl"
        if params.graph == "union_knn" and not self.dense:
            deps.dgl("method lsp with graph_backend 'dgl'")

    def required_features(self) -> tuple[list[str], list[str]]:
        return [self.params.student_feature], [self.params.teacher_feature]

    def reads_graph(self) -> bool:
        return self.params.graph == "native"

    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        return {"lsp": self._lsp(batch)}

    def _lsp(self, batch: DistillBatch) -> Tensor:
        student = batch.student.feat(self.params.student_feature)
        teacher = batch.teacher.feat(self.params.teacher_feature)
        if self.params.graph == "native":
            graph = require_graph(batch, self.name)
            return local_structure_kl(graph, student, teacher, self.params, batch.distill_mask)
        student, teacher = batch.distill_rows(student), batch.distill_rows(teacher)
        if self.dense:
            return union_knn_kl(student, teacher, self.params)
        graph = self._union_knn(student.detach().flatten(1), teacher.flatten(1))
        return local_structure_kl(graph, student, teacher, self.params)

    def _union_knn(self, student: Tensor, teacher: Tensor) -> dgl.DGLGraph:
        p = self.params
        graphs = [
            knn_instance_graph(x, p.k, metric=p.knn_metric, include_self=p.knn_include_self)
            for x in (teacher, student)
        ]
        return union_graph(*graphs)

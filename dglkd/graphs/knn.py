"""k-nearest-neighbour instance graphs over the rows of a tensor (the outputs of a batch).

One function, :func:`dense_knn_index`, chooses the neighbours; :func:`knn_instance_graph`
turns its index into a ``DGLGraph`` and :func:`mean_aggregate_dense` averages over it in
pure torch. Both paths therefore see exactly the same neighbours, and the rule is fixed:

* nearest first; among equal distances the lower row index wins (a stable sort);
* ``include_self=True`` always counts the node as one of its own k neighbours (the
  authors of HKD force it the same way), ``include_self=False`` never does;
* k is capped at the points available: every in-degree is ``min(k, n)`` with self and
  ``min(k, n - 1)`` without, per segment.

Why not ``dgl.knn_graph`` (DGL 2.1)? Its edges also point from neighbour to node, but it
counts self by distance alone, so with duplicate rows (a confident network gives many
identical softmax outputs) self can be displaced by a twin; with ``exclude_self=True``
such nodes then lose a *random* edge (``sample_neighbors``); ``segmented_knn_graph``
caps k at the smallest segment for every segment; and ties follow ``topk``'s
unspecified order, so no dense path could be guaranteed to pick the same neighbours. On
tie-free inputs with self included the graph here equals ``dgl.knn_graph``'s (tested).

Only :func:`knn_instance_graph` needs DGL (imported when it is called).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from dglkd import deps
from dglkd.errors import DglkdError, quoted

if TYPE_CHECKING:
    import dgl

METRICS = ("cosine", "euclidean")

# Distance rows computed at once: bounds memory to about 64 MiB on big graphs.
_CHUNK_ELEMENTS = 1 << 24


def dense_knn_index(
    x: Tensor,
    k: int,
    metric: str = "cosine",
    include_self: bool = True,
    softmax: bool = False,
) -> Tensor:
    """Neighbour index (n, k') of every row of ``x``: row i lists the k' nearest rows.

    ``x`` is detached and flattened to one vector per row; ``softmax=True`` compares
    ``softmax(x)`` (HKD: cosine between softmax(logits)). k' is ``min(k, n)`` with self,
    ``min(k, n - 1)`` without. Built on ``x``'s device, pure torch.
    """
    points = _prepare(x, metric, softmax)
    width = _neighbour_count(len(points), k, include_self)
    step = max(1, _CHUNK_ELEMENTS // max(1, len(points)))
    chunks = [
        _nearest(points, start, min(start + step, len(points)), width, metric, include_self)
        for start in range(0, len(points), step)
    ]
    return torch.cat(chunks)


def knn_instance_graph(
    x: Tensor,
    k: int,
    metric: str = "cosine",
    include_self: bool = True,
    softmax: bool = False,
    segments: list[int] | None = None,
) -> dgl.DGLGraph:
    """kNN graph over the rows of ``x``: an edge j → i for each of i's nearest rows j.

    Every in-degree is k capped at the rows available (see the module docstring for the
    rule on self and ties). ``segments`` (row counts summing to ``len(x)``) builds one
    graph per segment at once, returned batched; neighbours never cross segments.
    """
    sizes = _segment_sizes(x, segments)
    sources, targets, edge_counts = [], [], []
    start = 0
    for size in sizes:
        index = dense_knn_index(x[start : start + size], k, metric, include_self, softmax)
        sources.append(index.reshape(-1) + start)
        nodes = torch.arange(start, start + size, device=x.device)
        targets.append(nodes.repeat_interleave(index.shape[1]))
        edge_counts.append(index.numel())
        start += size
    dgl = deps.dgl("a kNN instance graph as a DGLGraph (graph_backend: dgl)")
    graph = dgl.graph((torch.cat(sources), torch.cat(targets)), num_nodes=len(x))
    if segments is not None:
        graph.set_batch_num_nodes(torch.tensor(sizes, dtype=torch.int64, device=x.device))
        graph.set_batch_num_edges(torch.tensor(edge_counts, dtype=torch.int64, device=x.device))
    return graph


def mean_aggregate_dense(z: Tensor, index: Tensor) -> Tensor:
    """Mean of ``z`` over each row's neighbours in ``index`` (n, k').

    On a kNN graph every in-degree is equal, so this is also what DGL's symmetric
    normalisation (GraphConv/TAGConv) computes: the dense twin of one propagation step.
    Rows without neighbours get zeros, as DGL gives them.
    """
    if index.shape[1] == 0:
        return torch.zeros_like(z)
    return z[index].mean(dim=1)


# -- helpers ----------------------------------------------------------------------------
def _prepare(x: Tensor, metric: str, softmax: bool) -> Tensor:
    if metric not in METRICS:
        raise DglkdError(f"metric: unknown {quoted(metric)}; allowed: {', '.join(METRICS)}")
    if len(x) == 0:
        raise DglkdError("x: a kNN graph needs at least one row, got none")
    points = x.detach().reshape(len(x), -1)
    # Half precision would turn near-ties into ties; selection is cheap in float32.
    points = points if points.dtype == torch.float64 else points.float()
    if softmax:
        points = points.softmax(dim=1)
    if metric == "cosine":
        points = F.normalize(points, dim=1)
    return points


def _neighbour_count(n: int, k: int, include_self: bool) -> int:
    if k < 1:
        raise DglkdError(f"k: must be at least 1, got {k}")
    return min(k, n if include_self else n - 1)


def _nearest(
    points: Tensor, start: int, stop: int, width: int, metric: str, include_self: bool
) -> Tensor:
    """Neighbour index of rows start..stop of ``points`` (already prepared)."""
    rows = points[start:stop]
    products = rows @ points.t()
    if metric == "cosine":
        distance = -products
    else:
        squares = (points * points).sum(dim=1)
        distance = squares[start:stop, None] + squares[None, :] - 2.0 * products
    own = torch.arange(stop - start, device=points.device)
    # Self is forced first (or kept last) instead of trusting a rounded zero distance.
    distance[own, own + start] = float("-inf") if include_self else float("inf")
    order = torch.sort(distance, dim=1, stable=True).indices
    return order[:, :width]


def _segment_sizes(x: Tensor, segments: list[int] | None) -> list[int]:
    if segments is None:
        return [len(x)]
    sizes = [int(s) for s in segments]
    if any(s < 1 for s in sizes) or sum(sizes) != len(x):
        raise DglkdError(
            f"segments: must be positive row counts summing to {len(x)} rows, got {sizes}"
        )
    return sizes

"""Union of two graphs over the same nodes (LSP's dynamic graphs: teacher's ∪ student's).

:func:`union_edges` works on edge lists in pure torch; :func:`union_graph` applies it to two
DGLGraphs (DGL imported when it is called).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dglkd import deps
from dglkd.errors import DglkdError

if TYPE_CHECKING:
    import dgl


def union_edges(edges1: tuple[Tensor, Tensor], edges2: tuple[Tensor, Tensor],
                num_nodes: int) -> tuple[Tensor, Tensor]:
    """``(src, dst)`` of every edge of either ``(src, dst)`` list, each once, grouped by
    destination node and by source within it (int64, on the first list's device)."""
    src1, dst1 = edges1
    src2, dst2 = (t.to(src1.device) for t in edges2)
    src = torch.cat([src1, src2]).long()
    dst = torch.cat([dst1, dst2]).long()
    # One integer per edge, destination first, so unique() both dedups and groups.
    keys = torch.unique(dst * num_nodes + src)
    return keys % num_nodes, torch.div(keys, num_nodes, rounding_mode="floor")


def union_graph(g1: dgl.DGLGraph, g2: dgl.DGLGraph) -> dgl.DGLGraph:
    """A graph on the nodes of ``g1`` and ``g2`` with every edge of either, each once.

    Edges come out grouped by destination node. A batch structure shared by both inputs
    (same ``batch_num_nodes``) is kept.
    """
    dgl = deps.dgl("union_graph (a DGLGraph)")
    n = g1.num_nodes()
    if g2.num_nodes() != n:
        raise DglkdError(
            f"union_graph: both graphs need the same nodes, got {n} and {g2.num_nodes()}"
        )
    graph = dgl.graph(union_edges(g1.edges(), g2.edges(), n), num_nodes=n)
    _keep_batches(graph, g1, g2)
    return graph


def _keep_batches(graph: dgl.DGLGraph, g1: dgl.DGLGraph, g2: dgl.DGLGraph) -> None:
    sizes = g1.batch_num_nodes()
    if g1.batch_size == 1 or not torch.equal(sizes, g2.batch_num_nodes().to(sizes.device)):
        return
    ends = torch.cumsum(sizes, 0)
    segment_of_edge = torch.searchsorted(ends, graph.edges()[1], right=True)
    graph.set_batch_num_nodes(sizes)
    graph.set_batch_num_edges(torch.bincount(segment_of_edge, minlength=len(sizes)))

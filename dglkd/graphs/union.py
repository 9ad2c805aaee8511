"""Union of two graphs over the same nodes (LSP's dynamic graphs: teacher's ∪ student's)."""
from __future__ import annotations

import dgl
import torch

from dglkd.errors import DglkdError


def union_graph(g1: dgl.DGLGraph, g2: dgl.DGLGraph) -> dgl.DGLGraph:
    """A graph on the nodes of ``g1`` and ``g2`` with every edge of either, each once.

    Edges come out grouped by destination node. A batch structure shared by both inputs
    (same ``batch_num_nodes``) is kept.
    """
    n = g1.num_nodes()
    if g2.num_nodes() != n:
        raise DglkdError(
            f"union_graph: both graphs need the same nodes, got {n} and {g2.num_nodes()}"
        )
    src1, dst1 = g1.edges()
    src2, dst2 = (t.to(src1.device) for t in g2.edges())
    src = torch.cat([src1, src2]).long()
    dst = torch.cat([dst1, dst2]).long()
    # One integer per edge, destination first, so unique() both dedups and groups.
    keys = torch.unique(dst * n + src)
    graph = dgl.graph((keys % n, torch.div(keys, n, rounding_mode="floor")), num_nodes=n)
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

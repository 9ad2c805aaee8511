"""A synthetic node-classification graph of any size (ogbn-arxiv's by default).

Labels are uniform over the classes. Each node starts one edge and the other edges
start at nodes drawn with skewed (Pareto) activity; an edge ends, with probability
``homophily``, at a node of its source's class and otherwise at any node. Features are the class centroid plus Gaussian
noise strong enough that one node's features alone classify it poorly, while the mean
over its (mostly same-class) neighbours classifies it well: a GCN beats an MLP.
"""
from __future__ import annotations

import dgl
import torch

from dglkd.data.task import GraphTask, masks_from_indices
from dglkd.errors import DglkdError


def _edges(labels: torch.Tensor, num_classes: int, num_edges: int, homophily: float, gen: torch.Generator):
    """``num_edges`` directed (src, dst) pairs, most of them within a class."""
    n = len(labels)
    # Every node cites at least once (no isolated node); the rest of the sources follow
    # a Pareto(3) activity, so a few hubs appear without swallowing the edge budget.
    activity = torch.empty(n).exponential_(generator=gen).div_(3.0).exp_()
    extra = max(num_edges - n, 0)
    src = torch.cat([torch.arange(min(n, num_edges)), torch.multinomial(activity, extra, replacement=True, generator=gen)])
    # Same-class targets: index into the nodes sorted by class, within the class's block.
    order = torch.argsort(labels)
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    cls = labels[src]
    offset = (torch.rand(num_edges, generator=gen) * counts[cls]).long()
    dst = torch.where(
        torch.rand(num_edges, generator=gen) < homophily,
        order[starts[cls] + offset],
        torch.randint(0, n, (num_edges,), generator=gen),
    )
    return src, dst


def _splits(n: int, train_share: float, val_share: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A seeded random train/val/test split by shares."""
    perm = torch.randperm(n, generator=gen)
    n_train, n_val = int(train_share * n), int(val_share * n)
    return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}


def synthetic_node_graph(
    num_nodes: int = 169_343,
    num_edges: int = 1_166_243,
    num_features: int = 128,
    num_classes: int = 40,
    seed: int = 0,
    train_share: float = 0.54,
    val_share: float = 0.18,
    homophily: float = 0.6,
    noise: float = 5.0,
) -> GraphTask:
    """A homophilous graph with ``num_edges`` generated edges, stored bidirected without
    self loops or duplicates (so ``graph.num_edges()`` is about twice ``num_edges``)."""
    if num_nodes < num_classes or num_classes < 2 or num_edges < 1:
        raise DglkdError(
            f"synthetic graph: num_nodes={num_nodes}, num_classes={num_classes}, num_edges={num_edges}; "
            "need num_nodes >= num_classes >= 2 and num_edges >= 1"
        )
    if not (0 < train_share and 0 <= val_share and train_share + val_share < 1):
        raise DglkdError(f"synthetic graph: train_share={train_share}, val_share={val_share} must leave a test share")
    gen = torch.Generator().manual_seed(int(seed))
    labels = torch.randint(0, num_classes, (num_nodes,), generator=gen)
    labels[:num_classes] = torch.arange(num_classes)  # every class present
    src, dst = _edges(labels, num_classes, num_edges, homophily, gen)
    graph = dgl.to_bidirected(dgl.remove_self_loop(dgl.graph((src, dst), num_nodes=num_nodes)))
    centroids = torch.randn(num_classes, num_features, generator=gen)
    feat = centroids[labels] + noise * torch.randn(num_nodes, num_features, generator=gen)
    graph.ndata["feat"] = feat
    graph.ndata["label"] = labels
    graph.ndata.update(masks_from_indices(num_nodes, **_splits(num_nodes, train_share, val_share, gen)))
    info = {"source": "synthetic", "seed": seed, "homophily": homophily, "noise": noise}
    return GraphTask(name="synthetic", graph=graph, num_classes=num_classes, info=info)

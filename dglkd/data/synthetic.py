"""A synthetic node-classification graph of any size (ogbn-arxiv's by default).

Labels are uniform over the classes. Each node starts one edge and the other edges
start at nodes drawn with skewed (Pareto) activity; an edge ends, with probability
``homophily``, at a node of its source's class and otherwise at any node. Features are the class centroid plus Gaussian
noise strong enough that one node's features alone classify it poorly, while the mean
over its (mostly same-class) neighbours classifies it well: a GCN beats an MLP.

``ARXIV_SHAPE`` and ``PRODUCTS_SHAPE`` hold the sizes of ogbn-arxiv and ogbn-products as
keyword arguments, so ``synthetic_node_graph(**PRODUCTS_SHAPE)`` builds a products-sized
graph and a benchmark can print which shape it used.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dglkd import deps
from dglkd.data.task import GraphTask, masks_from_indices
from dglkd.errors import DglkdError
from dglkd.resources import check_fits

# All of this module is DGL; dglkd.data imports it only for a graph dataset.
dgl = deps.dgl("synthetic graphs")

# ogbn-arxiv: 169,343 nodes; 1,166,243 generated edges, symmetrised with duplicates merged.
ARXIV_SHAPE: dict = {"num_nodes": 169_343, "num_edges": 1_166_243, "num_features": 128,
                     "num_classes": 40, "exact_edges": False, "train_share": 0.54, "val_share": 0.18}
# ogbn-products: 61,859,140 undirected edges stored both ways (123,718,280 directed), and
# its sales-rank split of 196,615 train / 39,323 val nodes (the rest, 2,213,091, test).
PRODUCTS_SHAPE: dict = {"num_nodes": 2_449_029, "num_edges": 61_859_140, "num_features": 100,
                        "num_classes": 47, "exact_edges": True,
                        "train_share": 196_615 / 2_449_029, "val_share": 39_323 / 2_449_029}

# Edges drawn per step in exact mode: bounds the per-step temporaries to ~200 MB.
_CHUNK = 1 << 22
# Each top-up round of exact mode closes most of the gap that duplicates left; a gap that
# will not close means the graph cannot hold that many distinct edges in practice.
_MAX_ROUNDS = 50
# Feature rows finished per step, so the centroid rows gathered per step stay small.
_FEAT_CHUNK = 1 << 18


class _ClassIndex:
    """Nodes sorted by class, with each class's block start and size."""

    def __init__(self, labels: Tensor, num_classes: int) -> None:
        self.labels = labels
        self.order = torch.argsort(labels)
        self.counts = torch.bincount(labels, minlength=num_classes)
        self.starts = torch.cumsum(self.counts, 0) - self.counts


def _ends(src: Tensor, classes: _ClassIndex, homophily: float, gen: torch.Generator) -> Tensor:
    """The end of each edge starting at ``src``: a node of the same class with probability
    ``homophily``, otherwise any node."""
    n = len(classes.labels)
    cls = classes.labels[src]
    counts = classes.counts[cls]
    # rand() * count can round up to count in float32; clamping keeps the index in its block.
    offset = torch.minimum((torch.rand(len(src), generator=gen) * counts).long(), counts - 1)
    return torch.where(
        torch.rand(len(src), generator=gen) < homophily,
        classes.order[classes.starts[cls] + offset],
        torch.randint(0, n, (len(src),), generator=gen),
    )


def _activity(n: int, gen: torch.Generator) -> Tensor:
    """Pareto(3) weights: a few hubs start many edges without swallowing the edge budget."""
    return torch.empty(n).exponential_(generator=gen).div_(3.0).exp_()


def _sources(activity: Tensor, count: int, gen: torch.Generator) -> Tensor:
    """``count`` edge sources drawn by activity (torch refuses to draw zero)."""
    if count == 0:
        return torch.empty(0, dtype=torch.int64)
    return torch.multinomial(activity, count, replacement=True, generator=gen)


def _edges(labels: torch.Tensor, num_classes: int, num_edges: int, homophily: float, gen: torch.Generator):
    """``num_edges`` directed (src, dst) pairs, most of them within a class."""
    n = len(labels)
    # Every node cites at least once (no isolated node); the rest of the sources follow
    # the skewed activity.
    activity = _activity(n, gen)
    extra = max(num_edges - n, 0)
    src = torch.cat([torch.arange(min(n, num_edges)), _sources(activity, extra, gen)])
    return src, _ends(src, _ClassIndex(labels, num_classes), homophily, gen)


def _draw_keys(classes: _ClassIndex, activity: Tensor, count: int, cover: bool, homophily: float,
               gen: torch.Generator) -> np.ndarray:
    """``count`` drawn edges as undirected keys ``min * n + max`` (self loops dropped, so
    fewer may come back). With ``cover`` the first edges start at nodes 0, 1, 2, ... so no
    node is left without an edge."""
    n = len(classes.labels)
    keys = np.empty(count, dtype=np.int64)
    filled = 0
    for start in range(0, count, _CHUNK):
        size = min(_CHUNK, count - start)
        covered = max(0, min(size, n - start)) if cover else 0
        src = torch.cat([torch.arange(start, start + covered),
                         _sources(activity, size - covered, gen)])
        dst = _ends(src, classes, homophily, gen)
        keep = src != dst
        chunk = torch.minimum(src, dst)[keep].mul_(n).add_(torch.maximum(src, dst)[keep])
        keys[filled : filled + len(chunk)] = chunk.numpy()
        filled += len(chunk)
    return keys[:filled]


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """The distinct keys, sorted (``keys`` is sorted in place on the way)."""
    keys.sort()
    first = np.empty(len(keys), dtype=bool)
    first[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return keys[first]


def _exact_keys(classes: _ClassIndex, num_edges: int, homophily: float, gen: torch.Generator) -> np.ndarray:
    """Exactly ``num_edges`` distinct undirected keys, sorted."""
    activity = _activity(len(classes.labels), gen)
    keys = _sorted_unique(_draw_keys(classes, activity, num_edges, True, homophily, gen))
    for rounds in range(_MAX_ROUNDS):
        need = num_edges - len(keys)
        if need == 0:
            return keys
        # Draw a little more than the gap, since some new edges repeat old ones; on a
        # nearly complete graph most do, so the draw doubles with each round.
        draw = (need + need // 4 + 16) << min(rounds, 10)
        fresh = _sorted_unique(_draw_keys(classes, activity, draw, False, homophily, gen))
        if len(keys):  # keep only edges not drawn before
            at = np.minimum(np.searchsorted(keys, fresh), len(keys) - 1)
            fresh = fresh[keys[at] != fresh]
        if len(fresh) > need:  # a seeded subset, so the count comes out exact
            fresh = fresh[np.sort(torch.randperm(len(fresh), generator=gen)[:need].numpy())]
        keys = np.concatenate([keys, fresh])
        keys.sort()
    raise DglkdError(
        f"synthetic graph: still {num_edges - len(keys)} edges short of num_edges={num_edges} after "
        f"{_MAX_ROUNDS} rounds; lower num_edges or homophily for {len(classes.labels)} nodes"
    )


def _both_ways(keys: np.ndarray, n: int) -> tuple[Tensor, Tensor]:
    """Each undirected key as the two directed edges (u, v) and (v, u)."""
    e = len(keys)
    src = np.empty(2 * e, dtype=np.int64)
    dst = np.empty(2 * e, dtype=np.int64)
    # Written straight into the halves of the outputs: no (E,) temporaries besides ``keys``.
    np.floor_divide(keys, n, out=src[:e])
    np.remainder(keys, n, out=src[e:])
    dst[:e] = src[e:]
    dst[e:] = src[:e]
    return torch.from_numpy(src), torch.from_numpy(dst)


def _exact_graph(labels: Tensor, num_classes: int, num_edges: int, homophily: float,
                 gen: torch.Generator) -> dgl.DGLGraph:
    """``num_edges`` distinct undirected edges without self loops, each stored both ways."""
    n = len(labels)
    keys = _exact_keys(_ClassIndex(labels, num_classes), num_edges, homophily, gen)
    src, dst = _both_ways(keys, n)
    del keys
    return dgl.graph((src, dst), num_nodes=n)


def _features(labels: Tensor, num_classes: int, num_features: int, noise: float,
              gen: torch.Generator) -> Tensor:
    """Class centroid plus Gaussian noise, built in place (no second (N, F) array)."""
    centroids = torch.randn(num_classes, num_features, generator=gen)
    feat = torch.randn(len(labels), num_features, generator=gen).mul_(noise)
    for start in range(0, len(labels), _FEAT_CHUNK):
        feat[start : start + _FEAT_CHUNK].add_(centroids[labels[start : start + _FEAT_CHUNK]])
    return feat


def _splits(n: int, train_share: float, val_share: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A seeded random train/val/test split by shares."""
    perm = torch.randperm(n, generator=gen)
    n_train, n_val = int(train_share * n), int(val_share * n)
    return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}


def _check(num_nodes: int, num_edges: int, num_classes: int, num_features: int, exact_edges: bool,
           train_share: float, val_share: float) -> None:
    """One-line errors for sizes the generator cannot honour."""
    if num_nodes < num_classes or num_classes < 2 or num_edges < 1 or num_features < 1:
        raise DglkdError(
            f"synthetic graph: num_nodes={num_nodes}, num_classes={num_classes}, num_edges={num_edges}, "
            f"num_features={num_features}; need num_nodes >= num_classes >= 2, num_edges >= 1 and num_features >= 1"
        )
    if exact_edges and num_edges > num_nodes * (num_nodes - 1) // 2:
        raise DglkdError(
            f"synthetic graph: num_edges={num_edges} distinct undirected edges do not fit in {num_nodes} nodes; "
            f"allowed at most {num_nodes * (num_nodes - 1) // 2}"
        )
    # float32 features, and each edge stored both ways as int64 ends in about three
    # formats (COO, CSR, CSC) while the graph is built.
    check_fits(num_nodes * (num_features * 4 + 64) + num_edges * 2 * 16 * 3,
               f"synthetic graph of {num_nodes:,} nodes and {num_edges:,} edges",
               "lower data.num_nodes / data.num_edges")
    if not (0 < train_share and 0 <= val_share and train_share + val_share < 1):
        raise DglkdError(f"synthetic graph: train_share={train_share}, val_share={val_share} must leave a test share")


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
    exact_edges: bool = False,
) -> GraphTask:
    """A seeded homophilous graph, stored bidirected without self loops or duplicate edges.

    By default ``num_edges`` edges are drawn and symmetrised with duplicates merged, so
    ``graph.num_edges()`` is about twice ``num_edges``. With ``exact_edges`` (ogbn-products'
    layout) ``num_edges`` is the exact number of distinct undirected edges, each stored
    both ways, so ``graph.num_edges() == 2 * num_edges``; this path also keeps memory low
    enough for products' size (int64 only for the final edge lists, temporaries freed).
    """
    _check(num_nodes, num_edges, num_classes, num_features, exact_edges, train_share, val_share)
    gen = torch.Generator().manual_seed(int(seed))
    labels = torch.randint(0, num_classes, (num_nodes,), generator=gen)
    labels[:num_classes] = torch.arange(num_classes)  # every class present
    if exact_edges:
        graph = _exact_graph(labels, num_classes, num_edges, homophily, gen)
    else:
        src, dst = _edges(labels, num_classes, num_edges, homophily, gen)
        graph = dgl.to_bidirected(dgl.remove_self_loop(dgl.graph((src, dst), num_nodes=num_nodes)))
        del src, dst
    graph.ndata["feat"] = _features(labels, num_classes, num_features, noise, gen)
    graph.ndata["label"] = labels
    graph.ndata.update(masks_from_indices(num_nodes, **_splits(num_nodes, train_share, val_share, gen)))
    info = {"source": "synthetic", "seed": seed, "homophily": homophily, "noise": noise,
            "exact_edges": exact_edges}
    return GraphTask(name="synthetic", graph=graph, num_classes=num_classes, info=info)

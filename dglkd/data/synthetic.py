"""OGB-shaped node-classification datasets with OGB-like difficulty (one seeded generator).

:data:`PRESETS` hold ogbn-arxiv's and ogbn-products' sizes (nodes, distinct undirected
edges, feature width, classes, split sizes) and the difficulty knobs calibrated for each;
:func:`shape_of` takes a preset at a ``scale`` (a share of the nodes and edges, the same
average degree) and :func:`generate` draws the dataset, seeded. What is drawn:

* **classes**: Zipf-like sizes (``class_skew``), every class present; the classes fall
  into ``groups`` whose members are confused with each other.
* **degrees**: each node has an activity, Pareto (``degree_shape``) times log-normal
  (``degree_spread``); edge ends are drawn by activity, so the degrees have a power-law
  tail; the first ``num_nodes`` edges start one at each node, so none is isolated.
  Duplicates and self loops are redrawn until exactly ``num_edges`` distinct edges remain.
* **homophily**: an edge stays inside its source's *community* with probability
  ``community_edges``, else it ends anywhere. A node's community is its own class's,
  except for a share ``misled`` of the nodes (more often the less active ones:
  ``misled_degree_bias``) that sit in another class's community of the same group. The
  misled nodes are what the graph gets wrong: their neighbours vote for the wrong class.
* **features**: group centre + ``separation`` × class offset + ``noise`` × Gaussian noise,
  scaled to unit variance per dimension: one node's features alone mostly tell its group,
  not its class, so an MLP is weak and averaging neighbours (a GNN) helps. With
  ``niches`` > 1 (products), each node also carries one of its group's ``niches`` offsets
  (``niche_spread``), shared by the group's classes: the most active nodes sit in the
  first niches, the long tail in any (:func:`_niches`). A split by activity then trains
  on nodes whose features the test nodes' often do not resemble: the MLP alone fits the
  training niches and misreads the tail, while a GNN reads the tail node's neighbours,
  mostly popular nodes, and GLNN's student, trained on the teacher's soft labels of every
  node, learns the tail's niches too.
* **split**: random with the real split's sizes (arxiv), or by activity with jitter
  (``split_by="activity"``, products: its sales-rank split trains on the most popular
  products and tests on the long tail).

Calibration (on this 2-core CPU), ogbn-arxiv at full size. The knobs were first set at 12%
of the size (20,321 nodes, where noise 4.4, misled 0.30, misled_degree_bias 2.5 gave the
GCN 71.8 and the MLP 56.1), but at full size the same knobs were 4-5 points too easy (one
seed of ``configs/ogbn_arxiv_sage_glnn.yaml``: SAGE 77.1, MLP alone 60.6; edge homophily
0.680): eight times the training nodes fit the class offsets better. So they were set again
at full size, with linear stand-ins first (``benchmarks/calibrate_ogb_like.py --scale 1
--proxy``: softmax regression on the features, and on the features with their 1-3 hop
means; about 80 s a point) and then the real GCN:

* the features: ``noise`` 4.4 → 4.9 brings the features' stand-in from 0.616 back to 0.565,
  its value at 12% of the size where the MLP reached 56.1;
* the graph: ``misled`` 0.44 with ``misled_degree_bias`` 4 matched the real edge homophily
  (0.637) and the GNN stand-in (0.738), but the real GCN reached only 66.7 (seed 0, best
  epoch 41): misled nodes piled on the least active nodes get the largest weights in GCN's
  symmetric normalisation. ``misled`` 0.30 with the bias at 1.0 (misled nodes spread over
  all activities) gives edge homophily 0.643 and the GCN 72.3 after 90 epochs
  (``benchmarks/calibrate_ogb_like.py --scale 1 --no-mlp --no-glnn --epochs 90``).

The result, the main job through OGB's layout, loader and Evaluator (OGB's leaderboard GCN
3×256 full batch; the config's student, a 3×1024 MLP with dropout 0.2 on node batches, alone
and by GLNN; the other rows are the config's earlier students, docs/RESULTS.md)::

    python -m dglkd.data.synthetic --like ogbn-arxiv --root DIR
    python -m dglkd distill configs/ogbn_arxiv_gcn_glnn.yaml --set data.root=DIR

    phase, 3 seeds (0, 1, 2)              test acc       best epochs   wall        peak RSS
    GCN 3×256 teacher, full batch         72.81 ± 0.22   150-286       650-925 s   ≤ 2.91 GB
    MLP 3×1024 alone, node batches        55.01 ± 0.12   1-2           254-389 s   ≤ 1.50 GB
    GLNN MLP 3×1024, node batches         73.39 ± 0.11   89-96 of 100  757-871 s   ≤ 1.40 GB
    seed 0, earlier students:
    MLP 3×256 alone, full batch           54.76          214           492 s       2.52 GB
    GLNN MLP 3×256, full batch            51.12          275           573 s       2.48 GB
    GLNN MLP 3×1024, dropout 0.5          62.33          187 of 200    2511 s      1.41 GB

The GCN and the MLP land at the real dataset's levels (GCN 71-72, MLP 55-57; edge homophily
0.643 against 0.655). A mini-batch GraphSAGE (``configs/ogbn_arxiv_sage_glnn.yaml``, seed 0)
reaches 75.1, 3.6 points above the real one: the knobs were set with the GCN. The GLNN
student's level is not calibrated: it follows from how well a student can fit each node's
soft label. The features are class centres plus noise drawn independently in every
dimension, so they hold nothing of the teacher's view beyond the class, and each node is a
distinct point: a same-sized 3×256 MLP fits no node's soft label (it agrees with the teacher
on 51.5% of the nodes, training, validation and test alike), a 3×1024 one with dropout 0.5
fits them slowly (39% of the gap after 200 epochs), and with dropout 0.2 it fits them all
and matches the teacher, where GLNN's paper closes about half the gap on the real
ogbn-arxiv, whose averaged word embeddings crowd near a lower-dimensional set. Mixing each
node's features with its neighbours' mean (half and half, noise 8.0 to keep the MLP's level)
did not change the 3×256 student (100 full-batch epochs: MLP 54.1, GCN 71.7, GLNN MLP 52.2)
and was not kept.

ogbn-products: the features' ``niches`` model products' long tail (the real MLP alone
scores about 75 on validation and 61 on test, the sales-rank split testing on products
unlike the popular ones). Without them (``niches`` 1, noise 3.9) the MLP alone reached
64.8 at full size and GLNN's student did not gain (64.5); classes with sub-topics of their
own made the MLP alone 72.7 (each sub-topic is a class signal); niches shared by a
group's classes, 20 per group with ``niche_spread`` 2.5 and noise 3.7, were first set at
20% of the size (a 3×512 MLP alone 60.8, the linear GNN stand-in 80.2, a GLNN MLP on its
soft labels 75.5) and then run at full size (one seed; docs/RESULTS.md)::

    python -m dglkd.data.synthetic --like ogbn-products --graph-file FILE
    python benchmarks/bench_products_scale.py --graph FILE --scale 1.0 --teacher-epochs 5 \
        --mlp-epochs 30 --student-epochs 6 --threads 2

    GraphSAGE 3×256 teacher, mini-batch, 5 epochs   test 75.89   validation 96.31
    MLP 3×1024 alone, 30 epochs                      test 62.08   validation 72.72
    GLNN MLP 3×1024, 6 epochs over every node        test 71.48   validation 72.92

with edge homophily 0.822 (the real one about 0.81). The MLP alone lands in the real band
(61-63); the teacher 2-3 points below the real SAGE (78-79) after 5 epochs, its sampled
validation flat from the second; GLNN's student gains 9.4 points (GLNN's paper, on the
real products: about 62 → 69).

What it does not model: arxiv's time split (the split here is random with the real sizes;
the ``node_year`` file written with it only agrees with the split's meaning) and the
distribution shift it brings to the test papers; real features (arxiv's are averaged word
embeddings of titles and abstracts, products' are bag-of-words reductions: here they are
Gaussian clusters, with nothing of a node's neighbourhood beyond its class, which is why a
same-sized GLNN student does not gain here, and independent in every dimension, which is why
a wide one matches the teacher on arxiv's shape); directed citations (edges are undirected,
and ogb adds the reverse edges as on the real arxiv); degree-degree correlation, triangles
and community structure beyond one community per class; class imbalance beyond a Zipf law;
products' SAGE teacher accuracy on the real long tail, which the activity split only
approximates, and how the long tail's features really differ from the popular products' (the
niches are one guess at it: Gaussian offsets shared within a class group, reached by
activity rank).

The arxiv-shaped dataset is written in OGB's own layout (:func:`write_ogb_like`, or
``python -m dglkd.data.synthetic --like ogbn-arxiv --root ROOT``), so ogb's
``DglNodePropPredDataset`` and ``Evaluator`` take it as the real ogbn-arxiv (``data: {name:
ogbn-arxiv, root: ROOT}``); a marker file keeps it from passing for the real one. The
products-shaped one is better saved with ``dgl.save_graphs`` (``--graph-file``, then
``data: {name: graph_file, path: ...}``): in OGB's layout, at scale 0.05 writing the csv
files took 125 s and ogb's first processing 33 s, about 40 and 11 minutes at full size.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dglkd import deps
from dglkd.data.ogb_layout import SYNTHETIC_MARKER, write_node_dataset
from dglkd.data.task import GraphTask, masks_from_indices
from dglkd.errors import DglkdError
from dglkd.resources import check_fits

# All of this module is DGL; dglkd.data imports it only for a graph dataset.
dgl = deps.dgl("synthetic graphs")

# Edges drawn per step: bounds the per-step temporaries to a few hundred MB.
_CHUNK = 1 << 22
# Each top-up round closes most of the gap that duplicates and self loops left; a gap
# that will not close means the graph cannot hold that many distinct edges.
_MAX_ROUNDS = 50
# Feature rows finished per step.
_FEAT_CHUNK = 1 << 18
# Log-normal jitter on the activity an activity split ranks by: popular nodes train,
# but not strictly in order of their degree.
_SPLIT_JITTER = 0.5


@dataclass(frozen=True)
class OgbShape:
    """Sizes and difficulty of an OGB-shaped dataset (see the module docstring)."""

    like: str
    num_nodes: int
    num_edges: int  # distinct undirected edges, no self loops
    num_features: int
    num_classes: int
    split: tuple[int, int, int]  # train, valid, test node counts
    class_skew: float  # class sizes ∝ rank ** -class_skew
    groups: int  # classes are confused within groups
    misled: float  # share of nodes linked within another class's community
    misled_degree_bias: float  # how much more often the less active nodes are misled
    community_edges: float  # share of edges within the source's community
    degree_shape: float  # Pareto shape of the nodes' activity (degree tail)
    degree_spread: float  # log-normal spread of the activity (degree bulk)
    separation: float  # a class's offset from its group's centre, relative to the group
    noise: float  # per-dimension feature noise, relative to the group centre
    split_by: str = "random"  # or "activity": train on the most active nodes, test on the least
    niches: int = 1  # feature niches per group, shared by its classes; the long tail spans more
    niche_spread: float = 0.0  # a niche's offset from its group's centre, relative to the group

    def scaled(self, scale: float) -> "OgbShape":
        """The same dataset with ``scale`` times the nodes, edges and split sizes (the
        same average degree, features and classes)."""
        if not 0 < scale <= 1:
            raise DglkdError(f"scale: {scale} must be in (0, 1]")
        if scale == 1:
            return self
        nodes = max(int(round(self.num_nodes * scale)), 4 * self.num_classes)
        train, val, _ = (max(int(round(s * nodes / self.num_nodes)), 1) for s in self.split)
        return dataclasses.replace(self, num_nodes=nodes,
                                   num_edges=int(round(self.num_edges * nodes / self.num_nodes)),
                                   split=(train, val, nodes - train - val))


PRESETS: dict[str, OgbShape] = {
    "ogbn-arxiv": OgbShape(
        like="ogbn-arxiv", num_nodes=169_343, num_edges=1_166_243, num_features=128,
        num_classes=40, split=(90_941, 29_799, 48_603), class_skew=0.9, groups=8,
        misled=0.30, misled_degree_bias=1.0, community_edges=0.9, degree_shape=1.5,
        degree_spread=0.0, separation=0.5, noise=4.9),
    "ogbn-products": OgbShape(
        like="ogbn-products", num_nodes=2_449_029, num_edges=61_859_140, num_features=100,
        num_classes=47, split=(196_615, 39_323, 2_213_091), class_skew=1.1, groups=9,
        misled=0.24, misled_degree_bias=1.0, community_edges=0.93, degree_shape=2.0,
        degree_spread=1.0, separation=0.5, noise=3.7, split_by="activity", niches=20,
        niche_spread=2.5),
}


@dataclass
class OgbLikeData:
    """What the generator draws, as arrays: ``edges`` (E, 2) int64 distinct undirected
    edges (u < v), ``feat`` (N, F) float32, ``labels`` (N,) int64 and ``split`` (train,
    valid, test node ids, each sorted)."""

    shape: OgbShape
    seed: int
    edges: np.ndarray
    feat: np.ndarray
    labels: np.ndarray
    split: dict[str, np.ndarray]

    def info(self) -> dict[str, Any]:
        """What a task built from these arrays records about them."""
        hom = float(np.mean(self.labels[self.edges[:, 0]] == self.labels[self.edges[:, 1]]))
        return {"source": "synthetic", "like": self.shape.like, "seed": self.seed,
                "shape": dataclasses.asdict(self.shape), "edge_homophily": round(hom, 4)}


class _Nodes:
    """Per-node draws the edges depend on, and the samplers over them."""

    def __init__(self, shape: OgbShape, rng: np.random.Generator) -> None:
        n, c = shape.num_nodes, shape.num_classes
        self.labels = _labels(shape, rng)
        self.group = rng.permutation(c) % shape.groups  # the group of each class
        self.activity = ((1.0 + rng.pareto(shape.degree_shape, n))
                         * np.exp(shape.degree_spread * rng.standard_normal(n)))
        self.community = _communities(shape, self.labels, self.group, self.activity, rng)
        self.community_edges = shape.community_edges
        # Nodes sorted by community: each is a contiguous block, drawn from by its slice
        # of the cumulative activity.
        self.order = np.argsort(self.community, kind="stable")
        self.start = np.searchsorted(self.community[self.order], np.arange(c + 1))
        self.cum_member = _cumulative(self.activity[self.order])
        self.cum_any = _cumulative(self.activity)

    def sources(self, count: int, first: int, cover: bool, rng: np.random.Generator) -> np.ndarray:
        """``count`` edge starts by activity; with ``cover`` the edges numbered below
        ``num_nodes`` start at nodes ``first``, ``first + 1``, ... so no node is isolated."""
        n = len(self.labels)
        covered = max(0, min(count, n - first)) if cover else 0
        drawn = _draw(self.cum_any, 0, n, count - covered, rng)
        return np.concatenate([np.arange(first, first + covered), drawn])

    def ends(self, src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The other end of each edge starting at ``src``: a member of the source's
        community (share ``community_edges``) or any node, either by activity."""
        inside = rng.random(len(src)) < self.community_edges
        dst = _draw(self.cum_any, 0, len(self.labels), len(src), rng)
        c = self.community[src[inside]]
        dst[inside] = self.order[_draw(self.cum_member, self.start[c], self.start[c + 1],
                                       len(c), rng)]
        return dst


def _communities(shape: OgbShape, labels: np.ndarray, group: np.ndarray,
                 activity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The community each node links within: its own class's, except for a share
    ``misled`` of the nodes, drawn more often among the less active ones
    (``activity ** -misled_degree_bias``), which sit in another class's community of
    their group (drawn by class size; any other class when the group has no other)."""
    c = shape.num_classes
    chance = activity ** -shape.misled_degree_bias
    chance = np.minimum(chance * shape.misled * len(labels) / chance.sum(), 1.0)
    misled = np.flatnonzero(rng.random(len(labels)) < chance)
    sizes = np.bincount(labels, minlength=c).astype(np.float64)
    community = labels.copy()
    for k in range(c):
        weights = np.where((group == group[k]) & (np.arange(c) != k), sizes, 0.0)
        if weights.sum() == 0:
            weights = np.where(np.arange(c) != k, sizes, 0.0)
        members = misled[labels[misled] == k]
        community[members] = rng.choice(c, size=len(members), p=weights / weights.sum())
    return community


def _cumulative(weights: np.ndarray) -> np.ndarray:
    """Cumulative weights with a leading 0: block [lo, hi) weighs ``cum[hi] - cum[lo]``."""
    return np.concatenate([[0.0], np.cumsum(weights, dtype=np.float64)])


def _draw(cum: np.ndarray, lo, hi, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` positions in blocks [lo, hi) drawn by weight (``cum`` from _cumulative)."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    lo = np.broadcast_to(np.asarray(lo, dtype=np.int64), (count,))
    hi = np.broadcast_to(np.asarray(hi, dtype=np.int64), (count,))
    target = cum[lo] + rng.random(count) * (cum[hi] - cum[lo])
    at = np.searchsorted(cum, target, side="right") - 1
    # Rounding can land on a block's edge (or a zero-weight node there): clamp inside it.
    return np.clip(at, lo, np.maximum(hi - 1, lo))


def _labels(shape: OgbShape, rng: np.random.Generator) -> np.ndarray:
    """Class of every node: Zipf-like class sizes (every class present), shuffled."""
    n, c = shape.num_nodes, shape.num_classes
    share = np.arange(1, c + 1, dtype=np.float64) ** -shape.class_skew
    share /= share.sum()
    sizes = np.maximum(np.floor(share * n).astype(np.int64), 1)
    sizes[0] += n - sizes.sum()
    # Class ids carry no order: the largest class is not always class 0.
    sizes = sizes[rng.permutation(c)]
    return rng.permutation(np.repeat(np.arange(c), sizes))


def _draw_keys(nodes: _Nodes, count: int, cover: bool, rng: np.random.Generator) -> np.ndarray:
    """``count`` drawn edges as undirected keys ``min * n + max`` (self loops dropped)."""
    n = len(nodes.labels)
    keys = np.empty(count, dtype=np.int64)
    filled = 0
    for start in range(0, count, _CHUNK):
        size = min(_CHUNK, count - start)
        src = nodes.sources(size, start, cover, rng)
        dst = nodes.ends(src, rng)
        keep = src != dst
        src, dst = src[keep], dst[keep]
        chunk = np.minimum(src, dst) * n + np.maximum(src, dst)
        keys[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    return keys[:filled]


def _exact_keys(nodes: _Nodes, num_edges: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``num_edges`` distinct undirected keys, sorted."""
    keys = np.unique(_draw_keys(nodes, num_edges, True, rng))
    for rounds in range(_MAX_ROUNDS):
        need = num_edges - len(keys)
        if need == 0:
            return keys
        # Draw a little more than the gap, since some new edges repeat old ones; on a
        # nearly complete graph most do, so the draw doubles with each round.
        fresh = np.unique(_draw_keys(nodes, (need + need // 4 + 16) << min(rounds, 10), False, rng))
        fresh = fresh[~np.isin(fresh, keys, assume_unique=True)]
        if len(fresh) > need:  # a seeded subset, so the count comes out exact
            fresh = np.sort(rng.choice(fresh, need, replace=False))
        keys = np.union1d(keys, fresh)
    raise DglkdError(f"synthetic graph: still {num_edges - len(keys)} edges short of "
                     f"num_edges={num_edges} after {_MAX_ROUNDS} rounds; lower num_edges for "
                     f"{len(nodes.labels)} nodes")


def _features(shape: OgbShape, labels: np.ndarray, group: np.ndarray, activity: np.ndarray,
              rng: np.random.Generator, niche_rng: np.random.Generator) -> np.ndarray:
    """Group centre + ``separation`` × class offset + ``niche_spread`` × niche offset +
    ``noise`` × Gaussian noise, each N(0, 1) per dimension, scaled to unit variance per
    dimension. The niche is drawn from ``niche_rng`` (see :func:`_niches`)."""
    f = shape.num_features
    centres = rng.standard_normal((shape.groups, f))
    offsets = rng.standard_normal((shape.num_classes, f))
    means = (centres[group] + shape.separation * offsets).astype(np.float32)
    niches = _niches(shape, activity, niche_rng)
    spread = shape.niche_spread if niches else 0.0
    scale = np.float32(1.0 / math.sqrt(1.0 + shape.separation ** 2 + spread ** 2
                                       + shape.noise ** 2))
    feat = np.empty((len(labels), f), dtype=np.float32)
    for start in range(0, len(labels), _FEAT_CHUNK):
        rows = slice(start, start + _FEAT_CHUNK)
        block = rng.standard_normal((len(labels[rows]), f), dtype=np.float32)
        block *= np.float32(shape.noise)
        block += means[labels[rows]]
        if niches:
            niche_offsets, niche = niches
            block += niche_offsets[group[labels[rows]], niche[rows]]
        feat[rows] = block * scale
    return feat


def _niches(shape: OgbShape, activity: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Each group's ``niches`` offsets (``niche_spread`` × N(0, 1) per dimension), shared
    by the group's classes, and each node's niche. The most active node draws from the
    first niche only, the least active from all of them, the reach growing linearly with
    the node's activity rank: as products' long tail holds the kinds of product the
    popular ones do not, and a split by activity trains on the popular ones. A niche tells
    nothing of the class within a group, but moves a tail node away from the training
    nodes' features; its neighbours, mostly active nodes, do not move. None with one
    niche."""
    f, s = shape.num_features, shape.niches
    if s <= 1:
        return None
    offsets = (shape.niche_spread * rng.standard_normal((shape.groups, s, f))).astype(np.float32)
    rank = np.empty(len(activity))
    rank[np.argsort(-activity, kind="stable")] = np.linspace(0.0, 1.0, len(activity))
    reach = 1.0 + (s - 1) * rank
    niche = np.minimum(rng.random(len(activity)) * reach, s - 1).astype(np.int64)
    return offsets, niche


def _split_order(shape: OgbShape, activity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Nodes in the order the split takes them (train first, then valid, then test):
    random, or by activity (as ogbn-products' sales-rank split trains on the most popular
    products), noisily: activity times a log-normal jitter."""
    if shape.split_by == "random":
        return rng.permutation(shape.num_nodes)
    rank = activity * np.exp(_SPLIT_JITTER * rng.standard_normal(shape.num_nodes))
    return np.argsort(-rank, kind="stable")


def _check(shape: OgbShape) -> None:
    """One-line errors for sizes the generator cannot honour."""
    n, e, c = shape.num_nodes, shape.num_edges, shape.num_classes
    if n < c or c < 2 or e < 1 or shape.num_features < 1:
        raise DglkdError(f"synthetic graph: num_nodes={n}, num_classes={c}, num_edges={e}, "
                         f"num_features={shape.num_features}; need num_nodes >= num_classes >= 2, "
                         "num_edges >= 1 and num_features >= 1")
    if e > n * (n - 1) // 2:
        raise DglkdError(f"synthetic graph: num_edges={e} distinct undirected edges do not fit in "
                         f"{n} nodes; allowed at most {n * (n - 1) // 2}")
    if shape.niches < 1 or shape.niche_spread < 0:
        raise DglkdError(f"synthetic graph: niches={shape.niches}, niche_spread="
                         f"{shape.niche_spread}; need niches >= 1 and niche_spread >= 0")
    if shape.split_by not in ("random", "activity"):
        raise DglkdError(f"split_by: unknown {shape.split_by!r}; allowed: random, activity")
    if min(shape.split) < 1 or sum(shape.split) != n:
        raise DglkdError(f"synthetic graph: split {shape.split} must be three positive sizes "
                         f"adding up to num_nodes={n}")
    # float32 features, and each edge stored both ways as int64 ends in about three
    # formats (COO, CSR, CSC) while the graph is built.
    check_fits(n * (shape.num_features * 4 + 64) + e * 2 * 16 * 3,
               f"synthetic graph of {n:,} nodes and {e:,} edges", "lower the scale")


def shape_of(like: str, scale: float = 1.0, **changes: Any) -> OgbShape:
    """The preset ``like`` (``ogbn-arxiv`` or ``ogbn-products``) at ``scale``, with any of
    :class:`OgbShape`'s fields changed."""
    if like not in PRESETS:
        raise DglkdError(f"like: unknown {like!r}; allowed: {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(OgbShape)} - {"like"}
    for key in changes:
        if key not in fields:
            raise DglkdError(f"{key}: not a field of the synthetic shape; allowed: "
                             f"{', '.join(sorted(fields))}")
    return dataclasses.replace(PRESETS[like], **changes).scaled(scale)


def generate(shape: OgbShape, seed: int = 0) -> OgbLikeData:
    """Draw the dataset of ``shape`` (seeded: the same seed gives the same arrays)."""
    _check(shape)
    rng = np.random.default_rng(seed)
    nodes = _Nodes(shape, rng)
    keys = _exact_keys(nodes, shape.num_edges, rng)
    edges = np.stack(np.divmod(keys, shape.num_nodes), axis=1)
    del keys
    # The niches draw from a stream of their own, so a shape without them keeps its arrays.
    feat = _features(shape, nodes.labels, nodes.group, nodes.activity, rng,
                     np.random.default_rng([seed, 1]))
    perm = _split_order(shape, nodes.activity, rng)
    train, val, _ = shape.split
    split = {"train": np.sort(perm[:train]), "valid": np.sort(perm[train:train + val]),
             "test": np.sort(perm[train + val:])}
    return OgbLikeData(shape, seed, edges, feat, nodes.labels, split)


def to_task(data: OgbLikeData) -> GraphTask:
    """The generated arrays as a graph task: each edge stored both ways."""
    n = data.shape.num_nodes
    src = torch.from_numpy(np.concatenate([data.edges[:, 0], data.edges[:, 1]]))
    dst = torch.from_numpy(np.concatenate([data.edges[:, 1], data.edges[:, 0]]))
    graph = dgl.graph((src, dst), num_nodes=n)
    del src, dst
    graph.ndata["feat"] = torch.from_numpy(data.feat)
    graph.ndata["label"] = torch.from_numpy(data.labels)
    graph.ndata.update(masks_from_indices(n, **{
        ours: torch.from_numpy(data.split[theirs])
        for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test"))}))
    return GraphTask(name=f"synthetic-{data.shape.like}", graph=graph,
                     num_classes=data.shape.num_classes, info=data.info())


def ogb_like(like: str = "ogbn-arxiv", scale: float = 1.0, seed: int = 0,
             **changes: Any) -> GraphTask:
    """A seeded OGB-shaped graph task (see :func:`shape_of` and the module docstring)."""
    return to_task(generate(shape_of(like, scale, **changes), seed))


def ogb_folder(root: str | os.PathLike, like: str) -> Path:
    """Where ogb looks for dataset ``like`` under ``root`` (``ogbn-arxiv`` → ``ogbn_arxiv``)."""
    return Path(root) / like.replace("-", "_")


def _years(data: OgbLikeData, rng: np.random.Generator) -> np.ndarray:
    """ogbn-arxiv's ``node_year`` file, consistent with its time split's meaning (train up
    to 2017, valid 2018, test 2019-2020) though the split itself is random."""
    years = np.empty(data.shape.num_nodes, dtype=np.int64)
    years[data.split["train"]] = rng.integers(1990, 2018, len(data.split["train"]))
    years[data.split["valid"]] = 2018
    years[data.split["test"]] = rng.integers(2019, 2021, len(data.split["test"]))
    return years


def write_ogb_like(root: str | os.PathLike, like: str = "ogbn-arxiv", scale: float = 1.0,
                   seed: int = 0, **changes: Any) -> Path:
    """Generate the dataset and write it in OGB's layout where ``ogb`` looks for the real
    ``like`` under ``root``, with the split name and extra node files ogb's master table
    gives it, so ``DglNodePropPredDataset(like, root)`` and ``Evaluator(like)`` take it as
    they take the real one. The folder carries :data:`SYNTHETIC_MARKER` (what was generated),
    which ``dglkd.data.ogb.load_ogb`` puts in the task's ``info``. Returns the folder."""
    from dglkd.data.ogb import official_meta

    meta = official_meta(like)
    data = generate(shape_of(like, scale, **changes), seed)
    node_files = {name: _years(data, np.random.default_rng(seed))
                  for name in str(meta["additional node files"]).split(",") if name == "node_year"}
    info = dict(data.info(), scale=scale, note=f"synthetic, not the real {like}; written by "
                "dglkd.data.synthetic")
    return write_node_dataset(
        ogb_folder(root, like), edges=data.edges, feat=data.feat, labels=data.labels,
        split=data.split, split_name=str(meta["split"]), node_files=node_files,
        note=info["note"], texts={SYNTHETIC_MARKER: json.dumps(info, indent=1)},
        replaceable=SYNTHETIC_MARKER)


def save_graph_file(task: GraphTask, path: str | os.PathLike) -> Path:
    """``dgl.save_graphs`` of the task's graph (with ``num_classes``) under a temporary name
    beside ``path``, flushed to disk, then renamed over ``path``: a killed run never
    leaves a file that looks finished."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DglkdError(f"{path.parent}: cannot write there ({exc.strerror})") from None
    os.close(fd)
    try:
        dgl.save_graphs(tmp, [task.graph], {"num_classes": torch.tensor([task.num_classes])})
        with open(tmp, "rb+") as handle:  # the rename must not land before the bytes
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise DglkdError(f"{path}: writing failed ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _peak_gib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    """``python -m dglkd.data.synthetic``: write an OGB-shaped dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m dglkd.data.synthetic",
        description="Write an OGB-shaped synthetic dataset: in OGB's layout under --root "
                    "(read by ogb's DglNodePropPredDataset as the real one would be), or as "
                    "a dgl.save_graphs file (--graph-file).")
    parser.add_argument("--like", default="ogbn-arxiv", help=f"one of {', '.join(PRESETS)}")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--root", help="OGB dataset root; writes ROOT/<name with _>/")
    where.add_argument("--graph-file", help="a dgl.save_graphs file (data.name graph_file)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="share of the real node and edge counts, same average degree")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.root:
            folder = write_ogb_like(args.root, args.like, args.scale, args.seed)
            with open(folder / SYNTHETIC_MARKER) as handle:
                info = json.load(handle)
            where_to = (f"{folder} (OGB layout); use data: {{name: {args.like}, root: "
                        f"{args.root}}}")
        else:
            task = ogb_like(args.like, args.scale, args.seed)
            info = task.info
            where_to = (f"{save_graph_file(task, args.graph_file)} (dgl.save_graphs); use "
                        f"data: {{name: graph_file, path: {args.graph_file}}}")
    except DglkdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shape = info["shape"]
    print(f"{args.like}-shaped synthetic dataset (scale {args.scale}, seed {args.seed}): "
          f"{shape['num_nodes']:,} nodes, {shape['num_edges']:,} undirected edges, "
          f"{shape['num_features']} features, {shape['num_classes']} classes, split "
          f"{'/'.join(f'{s:,}' for s in shape['split'])}, edge homophily "
          f"{info['edge_homophily']:.3f}")
    print(f"written to {where_to}")
    print(f"{time.perf_counter() - start:.0f} s, peak RSS {_peak_gib():.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Graphs in the npz layout of the GNN-to-MLP literature (GLNN, CPF).

An npz file holds the adjacency as CSR arrays ``adj_data/adj_indices/adj_indptr/adj_shape``,
the node attributes the same way under ``attr_*`` (or densely under ``attr_matrix``) and
``labels``. Loading follows GLNN: the adjacency is made symmetric and unweighted, self
loops are dropped, and (by default) only the largest connected component is kept.
"""
from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp
import torch

from dglkd import deps
from dglkd.data.splits import largest_connected_component, resplit_per_class
from dglkd.data.task import GraphTask
from dglkd.errors import DglkdError

# All of this module is DGL; dglkd.data imports it only for a graph dataset.
dgl = deps.dgl("npz graph files")

SPLITS = ("per_class",)
_CSR_PARTS = ("data", "indices", "indptr", "shape")


def _require(arrays, key: str, path: str) -> np.ndarray:
    """``arrays[key]``, or a one-line error naming the key and the keys present."""
    if key not in arrays.files:
        raise DglkdError(
            f"{path}: npz key {key!r} missing; keys present: {', '.join(sorted(arrays.files))}"
        )
    return arrays[key]


def _csr(arrays, prefix: str, path: str) -> sp.csr_matrix:
    """The CSR matrix stored under ``{prefix}_data/indices/indptr/shape``."""
    data, indices, indptr, shape = (_require(arrays, f"{prefix}_{p}", path) for p in _CSR_PARTS)
    return sp.csr_matrix((data, indices, indptr), shape=tuple(int(s) for s in shape))


def _features(arrays, path: str) -> np.ndarray:
    """Dense float32 node features (CSR ``attr_*`` or a dense ``attr_matrix``)."""
    if "attr_matrix" in arrays.files:
        return np.asarray(arrays["attr_matrix"], dtype=np.float32)
    return _csr(arrays, "attr", path).toarray().astype(np.float32)


def _graph_from_adjacency(adj: sp.spmatrix) -> dgl.DGLGraph:
    """Symmetric, unweighted DGL graph without self loops."""
    adj = adj.tocoo()
    keep = adj.row != adj.col
    src = np.concatenate([adj.row[keep], adj.col[keep]])
    dst = np.concatenate([adj.col[keep], adj.row[keep]])
    # Duplicate (i, j) pairs from A + A^T collapse into one edge.
    pairs = np.unique(src.astype(np.int64) * adj.shape[0] + dst, return_index=False)
    n = adj.shape[0]
    return dgl.graph((torch.from_numpy(pairs // n), torch.from_numpy(pairs % n)), num_nodes=n)


def load_npz(
    path: str,
    lcc: bool = True,
    split: str = "per_class",
    train_per_class: int = 20,
    val_per_class: int = 30,
    seed: int = 0,
) -> GraphTask:
    """Load an npz graph; ``split="per_class"`` draws ``train_per_class`` train and
    ``val_per_class`` val nodes per class with ``seed`` and puts the rest in test."""
    if split not in SPLITS:
        raise DglkdError(f"split={split!r} unknown for npz graphs; allowed: {', '.join(SPLITS)}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DglkdError(f"npz graph file not found: {path}")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DglkdError(f"{path}: not a readable npz file ({exc})") from None
    with arrays:
        adj = _csr(arrays, "adj", path)
        feat = _features(arrays, path)
        labels = np.asarray(_require(arrays, "labels", path)).astype(np.int64).reshape(-1)
    n = adj.shape[0]
    if adj.shape[1] != n or feat.shape[0] != n or labels.shape[0] != n:
        raise DglkdError(
            f"{path}: adjacency {adj.shape}, attributes {feat.shape} and labels "
            f"{labels.shape} must agree on the number of nodes"
        )
    graph = _graph_from_adjacency(adj)
    graph.ndata["feat"] = torch.from_numpy(feat)
    graph.ndata["label"] = torch.from_numpy(labels)
    num_nodes_file = n
    if lcc:
        graph = dgl.node_subgraph(graph, largest_connected_component(graph), store_ids=False)
    name = os.path.splitext(os.path.basename(path))[0]
    info = {"source": path, "lcc": lcc, "num_nodes_in_file": num_nodes_file}
    task = GraphTask(name=name, graph=graph, num_classes=int(labels.max()) + 1, info=info)
    return resplit_per_class(task, train_per_class, val_per_class, seed)

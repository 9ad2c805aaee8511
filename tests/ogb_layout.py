"""Write a tiny node-property dataset in OGB's on-disk layout (test helper).

The layout is the one ``ogb.nodeproppred.DglNodePropPredDataset`` reads (csv, not binary)::

    <dir>/RELEASE_v1.txt
    <dir>/raw/{edge,node-feat,node-label,num-node-list,num-edge-list,node_year}.csv.gz
    <dir>/split/<split>/{train,valid,test}.csv.gz

Every csv is gzip-compressed, comma-separated, without a header. Edges are directed
(one row ``src,dst`` each), like ogbn-arxiv's.
"""
from __future__ import annotations

import gzip
import os
from typing import Any

import numpy as np


def _write_csv(path: str, rows: np.ndarray, fmt: str) -> None:
    """A gzip csv without header, one row of ``rows`` per line."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rows = rows.reshape(len(rows), -1)
    with gzip.open(path, "wt") as f:
        for row in rows:
            f.write(",".join(fmt % v for v in row) + "\n")


def tiny_meta_dict(dir_path: str, num_classes: int, split: str = "random") -> dict[str, Any]:
    """An ogb meta_dict describing the tiny dataset (same keys as ogb's master.csv)."""
    return {
        "dir_path": dir_path,
        "version": 1,
        "download_name": "tiny",
        "url": "",
        "num tasks": 1,
        "num classes": num_classes,
        "eval metric": "acc",
        "task type": "multiclass classification",
        "add_inverse_edge": "False",
        "has_node_attr": "True",
        "has_edge_attr": "False",
        "split": split,
        "additional node files": "node_year",
        "additional edge files": "None",
        "is hetero": "False",
        "binary": "False",
    }


def write_tiny_ogb(
    dir_path: str,
    num_nodes: int = 60,
    num_classes: int = 3,
    num_features: int = 8,
    split: str = "random",
    seed: int = 0,
) -> dict[str, Any]:
    """Write the dataset into ``dir_path``; return its meta_dict and the arrays written."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_nodes) % num_classes
    feat = rng.normal(size=(num_nodes, num_features)).astype(np.float32)
    feat[np.arange(num_nodes), labels] += 3.0  # learnable, not that it matters here
    # Rings through the nodes of each class plus chords within a class: homophilous (as
    # citation graphs are), so a GCN learns it; no self loops, no reverse duplicates.
    src = np.arange(num_nodes)
    step = num_classes if num_nodes % num_classes == 0 else 1
    edges = np.concatenate(
        [np.stack([src, (src + step) % num_nodes], 1),
         np.stack([src[::3], (src[::3] + 3 * step) % num_nodes], 1)]
    )
    perm = rng.permutation(num_nodes)
    n_train, n_val = num_nodes // 2, num_nodes // 4
    idx = {"train": perm[:n_train], "valid": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}

    raw = os.path.join(dir_path, "raw")
    _write_csv(os.path.join(raw, "edge.csv.gz"), edges, "%d")
    _write_csv(os.path.join(raw, "node-feat.csv.gz"), feat, "%.6f")
    _write_csv(os.path.join(raw, "node-label.csv.gz"), labels, "%d")
    _write_csv(os.path.join(raw, "node_year.csv.gz"), 2000 + labels, "%d")
    _write_csv(os.path.join(raw, "num-node-list.csv.gz"), np.array([num_nodes]), "%d")
    _write_csv(os.path.join(raw, "num-edge-list.csv.gz"), np.array([len(edges)]), "%d")
    for part, ids in idx.items():
        _write_csv(os.path.join(dir_path, "split", split, f"{part}.csv.gz"), np.sort(ids), "%d")
    with open(os.path.join(dir_path, "RELEASE_v1.txt"), "w") as f:
        f.write("tiny dataset written by dglkd's tests\n")
    return {
        "meta_dict": tiny_meta_dict(dir_path, num_classes, split),
        "edges": edges,
        "feat": feat,
        "labels": labels,
        "split": idx,
    }

"""A tiny node-property dataset in OGB's on-disk layout, written by dglkd's own writer
(``dglkd.data.ogb_layout.write_node_dataset``), for tests of OGB's loading path.

Edges are directed (one row ``src,dst`` each), like ogbn-arxiv's; the additional node file
``node_year`` is written too, as ogbn-arxiv's meta asks for it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dglkd.data.ogb_layout import meta_dict, write_node_dataset


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
    write_node_dataset(dir_path, edges=edges, feat=feat, labels=labels, split=idx,
                       split_name=split, node_files={"node_year": 2000 + labels},
                       note="tiny dataset written by dglkd's tests")
    return {
        "meta_dict": meta_dict(dir_path, num_classes, split, ("node_year",)),
        "edges": edges,
        "feat": feat,
        "labels": labels,
        "split": idx,
    }

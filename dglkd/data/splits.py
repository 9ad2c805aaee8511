"""Node splits shared by the graph loaders: per-class splits, the largest connected
component, and GLNN's inductive setting."""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from dglkd.data.task import GraphTask, masks_from_indices
from dglkd.errors import DglkdError


def per_class_split(
    labels: Tensor, train_per_class: int, val_per_class: int, seed: int
) -> dict[str, Tensor]:
    """Seeded random split: ``train_per_class`` train and ``val_per_class`` val nodes
    of every class, every other node in test. Returns sorted index tensors."""
    if train_per_class < 1 or val_per_class < 0:
        raise DglkdError(
            f"train_per_class={train_per_class}, val_per_class={val_per_class}: "
            "need train_per_class >= 1 and val_per_class >= 0"
        )
    labels = torch.as_tensor(labels).view(-1)
    gen = torch.Generator().manual_seed(int(seed))
    need = train_per_class + val_per_class
    parts: dict[str, list[Tensor]] = {"train": [], "val": [], "test": []}
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls, as_tuple=True)[0]
        if len(members) < need:
            raise DglkdError(
                f"class {cls} has {len(members)} nodes, fewer than "
                f"train_per_class + val_per_class = {need}; lower them"
            )
        members = members[torch.randperm(len(members), generator=gen)]
        parts["train"].append(members[:train_per_class])
        parts["val"].append(members[train_per_class:need])
        parts["test"].append(members[need:])
    return {k: torch.sort(torch.cat(v))[0] for k, v in parts.items()}


def largest_connected_component(graph) -> Tensor:
    """Sorted node ids of the largest (weakly) connected component of ``graph``."""
    n = graph.num_nodes()
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    src, dst = (t.cpu().numpy() for t in graph.edges())
    adj = sp.coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    _, comp = connected_components(adj, directed=True, connection="weak")
    biggest = np.bincount(comp).argmax()
    return torch.from_numpy(np.flatnonzero(comp == biggest)).long()


def make_inductive(task: GraphTask, hidden_test_share: float = 0.2, seed: int = 0) -> GraphTask:
    """GLNN's inductive setting: hide a seeded share of the test nodes from training.

    The returned task keeps the full graph; ``observed_mask`` marks the nodes teacher
    and student may see while training, ``test_mask`` marks the hidden test nodes only,
    and ``observed_test_mask`` the test nodes left visible (GLNN's "transductive" part).
    """
    if task.observed_mask is not None:
        raise DglkdError(f"dataset {task.name!r} is already inductive; split it only once")
    if not 0.0 < hidden_test_share < 1.0:
        raise DglkdError(
            f"hidden_test_share={hidden_test_share}: must lie strictly between 0 and 1"
        )
    test_idx = torch.nonzero(task.mask("test"), as_tuple=True)[0]
    gen = torch.Generator().manual_seed(int(seed))
    n_hidden = int(round(hidden_test_share * len(test_idx)))
    if n_hidden == 0 or n_hidden == len(test_idx):
        raise DglkdError(
            f"hidden_test_share={hidden_test_share} of {len(test_idx)} test nodes leaves "
            "no hidden or no observed test node; use a larger test split or another share"
        )
    hidden = test_idx[torch.randperm(len(test_idx), generator=gen)[:n_hidden]]
    graph = task.graph.clone()  # the caller's task keeps its own masks
    hidden_mask = torch.zeros(graph.num_nodes(), dtype=torch.bool, device=task.mask("test").device)
    hidden_mask[hidden] = True
    graph.ndata["observed_test_mask"] = task.mask("test") & ~hidden_mask
    graph.ndata["test_mask"] = hidden_mask
    info = dict(task.info, setting="inductive", hidden_test_share=hidden_test_share, split_seed=seed)
    return dataclasses.replace(task, graph=graph, observed_mask=~hidden_mask, info=info)


def resplit_per_class(task: GraphTask, train_per_class: int, val_per_class: int,
                      seed: int) -> GraphTask:
    """The same task with a seeded per-class random split in place of its own masks."""
    graph = task.graph.clone()
    idx = per_class_split(graph.ndata["label"], train_per_class, val_per_class, seed)
    graph.ndata.update(masks_from_indices(graph.num_nodes(), **idx))
    return dataclasses.replace(task, graph=graph, info={**task.info, "split_seed": seed})

"""A user's own graph: a DGLGraph in memory or a file saved with ``dgl.save_graphs``."""
from __future__ import annotations

import os

import torch
from torch import Tensor

from dglkd import deps
from dglkd.data.task import GraphTask
from dglkd.errors import DglkdError

# All of this module is DGL; dglkd.data imports it only for a graph dataset.
dgl = deps.dgl("graph files (dgl.save_graphs)")

MASKS = ("train_mask", "val_mask", "test_mask")


def _ndata(graph: dgl.DGLGraph, key: str, what: str, name: str) -> Tensor:
    """``graph.ndata[key]``, or a one-line error saying what it must hold."""
    if key not in graph.ndata:
        present = ", ".join(sorted(graph.ndata.keys())) or "none"
        raise DglkdError(f"graph {name!r}: ndata[{key!r}] missing; set it to {what} (ndata present: {present})")
    value = graph.ndata[key]
    if value.shape[0] != graph.num_nodes():
        raise DglkdError(f"graph {name!r}: ndata[{key!r}] has {value.shape[0]} rows for {graph.num_nodes()} nodes")
    return value


def _features(graph: dgl.DGLGraph, name: str) -> Tensor:
    """Node features as float32 of shape (N, F)."""
    feat = _ndata(graph, "feat", "a float tensor of shape (num_nodes, num_features)", name)
    if feat.dim() != 2:
        raise DglkdError(f"graph {name!r}: ndata['feat'] has shape {tuple(feat.shape)}; need (num_nodes, num_features)")
    if feat.is_complex() or feat.dtype == torch.bool:
        raise DglkdError(f"graph {name!r}: ndata['feat'] has dtype {feat.dtype}; need a real number type")
    feat = feat.float()
    finite = torch.isfinite(feat).all(dim=1)
    if not bool(finite.all()):
        # A NaN or inf feature turns every loss into NaN: training would end "normally"
        # with meaningless accuracies.
        bad = (~finite).nonzero().view(-1)
        raise DglkdError(f"graph {name!r}: ndata['feat'] has NaN or infinite values on "
                         f"{bad.numel()} nodes (first: node {int(bad[0])}); fill or drop "
                         "them before loading")
    return feat


def _labels(graph: dgl.DGLGraph, name: str) -> Tensor:
    """Class labels as int64 of shape (N,); a (N, 1) column is flattened."""
    label = _ndata(graph, "label", "an int64 tensor of shape (num_nodes,) with class ids", name)
    if label.dim() == 2 and label.shape[1] == 1:
        label = label.view(-1)
    if label.dim() != 1 or label.is_floating_point() or label.dtype == torch.bool:
        raise DglkdError(
            f"graph {name!r}: ndata['label'] has shape {tuple(label.shape)} and dtype {label.dtype}; "
            "need integer class ids of shape (num_nodes,)"
        )
    return label.long()


def _mask(graph: dgl.DGLGraph, key: str, name: str) -> Tensor:
    """A boolean node mask of shape (N,); 0/1 integers are accepted."""
    mask = _ndata(graph, key, "a bool tensor of shape (num_nodes,)", name)
    zero_one = mask.dtype == torch.bool or bool(((mask == 0) | (mask == 1)).all())
    if mask.dim() != 1 or mask.is_floating_point() or not zero_one:
        raise DglkdError(f"graph {name!r}: ndata[{key!r}] must be a bool (or 0/1) tensor of shape (num_nodes,)")
    return mask.bool()


def _check_labels(label: Tensor, masks: dict[str, Tensor], name: str,
                  num_classes: int | None) -> int:
    """The number of classes; every train/val/test label must lie in ``[0, num_classes)``.

    Without ``num_classes`` the classes are the contiguous ids ``0..K-1`` the labelled
    nodes use: a label past a gap (a typo such as 99 among 0..6) is an error instead of
    silently adding classes that no node has. A class seen only on validation or test
    nodes is allowed. Pass ``num_classes`` to allow gaps deliberately.
    """
    labelled = label[masks["train_mask"] | masks["val_mask"] | masks["test_mask"]]
    if num_classes is None:
        present = set(torch.unique(labelled[labelled >= 0]).tolist())
        num_classes = next(k for k in range(len(present) + 1) if k not in present)
        source = "the contiguous class ids the labelled nodes use"
    else:
        source = f"num_classes={num_classes}"
    outside = (labelled < 0) | (labelled >= num_classes)
    if bool(outside.any()):
        values = labelled[outside]
        raise DglkdError(
            f"graph {name!r}: ndata['label'] of {int(outside.sum())} train/val/test nodes "
            f"lies outside [0, {num_classes}) ({source}; found {int(values.min())}.."
            f"{int(values.max())}); class ids are 0..{num_classes - 1}")
    return num_classes


def from_dgl_graph(graph: dgl.DGLGraph, name: str = "user", num_classes: int | None = None) -> GraphTask:
    """Check a user's homogeneous DGLGraph and wrap it as a task (the graph is copied
    shallowly, so the caller's ndata is left as it was)."""
    if not isinstance(graph, dgl.DGLGraph):
        raise DglkdError(f"graph {name!r}: expected a dgl.DGLGraph, got {type(graph).__name__}")
    if len(graph.ntypes) != 1 or len(graph.etypes) != 1:
        raise DglkdError(f"graph {name!r}: heterogeneous graphs are not supported; convert with dgl.to_homogeneous")
    graph = graph.clone()
    feat, label = _features(graph, name), _labels(graph, name)
    masks = {key: _mask(graph, key, name) for key in MASKS}
    if not bool(masks["train_mask"].any()):
        raise DglkdError(f"graph {name!r}: ndata['train_mask'] selects no node")
    num_classes = _check_labels(label, masks, name, num_classes)
    graph.ndata["feat"], graph.ndata["label"] = feat, label
    graph.ndata.update(masks)
    return GraphTask(name=name, graph=graph, num_classes=int(num_classes), info={"source": "user graph"})


def load_graph_file(path: str, num_classes: int | None = None) -> GraphTask:
    """The first graph of a file written by ``dgl.save_graphs``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DglkdError(f"graph file not found: {path}")
    try:
        graphs, _ = dgl.load_graphs(path)
    except Exception as exc:  # DGL raises its own DGLError on a foreign file
        raise DglkdError(f"{path}: not a file written by dgl.save_graphs ({type(exc).__name__})") from None
    if not graphs:
        raise DglkdError(f"{path}: holds no graph")
    name = os.path.splitext(os.path.basename(path))[0]
    task = from_dgl_graph(graphs[0], name=name, num_classes=num_classes)
    task.info["source"] = path
    return task

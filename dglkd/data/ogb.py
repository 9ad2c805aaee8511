"""OGB node-property datasets (ogbn-arxiv, ogbn-products, ...) through ogb's own loader.

``ogb.nodeproppred.DglNodePropPredDataset`` downloads into ``root`` when the dataset is
missing. Two of its code paths call ``input()``: a dataset folder without its
``RELEASE_v<version>.txt`` ("will you update?") and downloads over 1 GB ("will you
proceed?"). A run without a terminal must never hang there, so the folder is checked
first and, without a terminal, the download question becomes a one-line error saying
what to download and where to put it.

A dataset folder written by :mod:`dglkd.data.synthetic` (an OGB-shaped synthetic dataset
in OGB's layout) holds a marker file; its content goes into ``task.info["synthetic"]``,
so a run on it never passes for the real dataset.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from typing import Any, Callable, Iterator

import pandas as pd
import torch
from torch import Tensor

from dglkd import deps
from dglkd.data.ogb_layout import SYNTHETIC_MARKER
from dglkd.data.task import GraphTask, accuracy, masks_from_indices
from dglkd.errors import DglkdError

# All of this module is DGL; dglkd.data imports it only for a graph dataset.
dgl = deps.dgl("the OGB loader")

_OGB_SPLIT_NAMES = {"train": "train", "val": "valid", "test": "test"}


def _master_table() -> pd.DataFrame:
    """ogb's table of official node-property datasets (one column per dataset)."""
    import ogb.nodeproppred

    path = os.path.join(os.path.dirname(ogb.nodeproppred.__file__), "master.csv")
    return pd.read_csv(path, index_col=0, keep_default_na=False)


def official_meta(name: str) -> dict[str, Any]:
    """ogb's meta information of the official dataset ``name`` (its master.csv column)."""
    return _meta_info(name, None)


# The keys DglNodePropPredDataset reads from a meta_dict (``url`` only to download).
META_KEYS = (
    "dir_path", "version", "download_name", "num tasks", "task type", "eval metric",
    "num classes", "is hetero", "binary", "add_inverse_edge", "additional node files",
    "additional edge files", "split",
)


def _meta_info(name: str, meta_dict: dict[str, Any] | None) -> dict[str, Any]:
    """The meta information ogb will use for ``name``."""
    if meta_dict is not None:
        missing = [k for k in META_KEYS if k not in meta_dict]
        if missing:
            raise DglkdError(f"meta_dict for {name!r} lacks key {missing[0]!r}; required keys: {', '.join(META_KEYS)}")
        return meta_dict
    table = _master_table()
    if name not in table:
        raise DglkdError(
            f"OGB dataset {name!r} unknown; allowed: {', '.join(table.columns)} "
            "(or pass meta_dict for a custom dataset)"
        )
    return dict(table[name])


def _dataset_dir(name: str, root: str, meta_dict: dict[str, Any] | None) -> str:
    """The folder ogb reads the dataset from (mirrors DglNodePropPredDataset)."""
    if meta_dict is not None:
        return meta_dict["dir_path"]
    dir_name = "_".join(name.split("-"))
    if os.path.exists(os.path.join(root, dir_name + "_dgl")):
        dir_name += "_dgl"
    return os.path.join(root, dir_name)


def _raw_file(folder: str, meta: dict[str, Any]) -> str:
    """The raw file whose presence tells ogb the dataset is downloaded."""
    if str(meta.get("binary")) == "True":
        return os.path.join(folder, "raw", "data.npz")
    return os.path.join(folder, "raw", "edge.csv.gz")


def _has_data(folder: str, meta: dict[str, Any]) -> bool:
    """Whether ogb will find processed or raw files in ``folder`` (no download)."""
    processed = os.path.join(folder, "processed", "dgl_data_processed")
    return os.path.exists(processed) or os.path.exists(_raw_file(folder, meta))


def _download_hint(name: str, folder: str, meta: dict[str, Any]) -> str:
    """Where to get the zip and where its folder goes."""
    return f"download {meta.get('url')} and unzip it, then move its folder {meta.get('download_name')!r} to {folder}"


def _interactive() -> bool:
    """Whether a person can answer a question on stdin."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):  # closed or replaced stdin
        return False


class _DownloadDeclined(Exception):
    """ogb asked to confirm a large download and nobody can answer."""


@contextlib.contextmanager
def _no_blocking_prompt() -> Iterator[None]:
    """Without a terminal, decline ogb's large-download question instead of waiting."""
    import ogb.utils.url as ogb_url

    def ask(prompt: str = "") -> str:
        if _interactive():
            return input(prompt)
        raise _DownloadDeclined(prompt.strip())

    # ogb calls the builtin input() from this module; a module global shadows it.
    ogb_url.input = ask  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del ogb_url.input  # type: ignore[attr-defined]


def _open_dataset(name: str, root: str, meta_dict: dict[str, Any] | None, meta: dict[str, Any]):
    """``DglNodePropPredDataset``, with download failures as one-line DglkdErrors."""
    from ogb.nodeproppred import DglNodePropPredDataset

    folder = _dataset_dir(name, root, meta_dict)
    release = os.path.join(folder, f"RELEASE_v{meta['version']}.txt")
    if os.path.isdir(folder) and not os.path.exists(release):
        # ogb would stop and ask whether to delete the folder.
        raise DglkdError(
            f"{folder} lacks {os.path.basename(release)} (an old or partial copy of {name}): "
            f"delete the folder to re-download, or {_download_hint(name, folder, meta)}"
        )
    if _has_data(folder, meta):
        return DglNodePropPredDataset(name=name, root=root, meta_dict=meta_dict)
    if not meta.get("url"):
        raise DglkdError(f"{name}: {_raw_file(folder, meta)} not found and meta_dict has no 'url' to download from")
    try:
        with _no_blocking_prompt():
            return DglNodePropPredDataset(name=name, root=root, meta_dict=meta_dict)
    except _DownloadDeclined as exc:
        size = re.search(r"[\d.]+ ?GB", str(exc))
        why = f"its {size.group(0) if size else 'large'} download needs a yes and no terminal is attached"
    except SystemExit:  # ogb calls exit(-1) when the person answers no
        why = "its download was declined"
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; ogb raises RuntimeError mid-download
        why = f"could not be downloaded (offline?) ({type(exc).__name__})"
    raise DglkdError(f"{name} not found under {folder} and {why}: {_download_hint(name, folder, meta)}") from None


def _ogb_metric(name: str) -> Callable[[Tensor, Tensor], float]:
    """Accuracy through ogb's Evaluator for official datasets; plain accuracy otherwise
    (ogb's Evaluator only knows the names in its master table)."""
    if name not in _master_table():
        return accuracy
    from ogb.nodeproppred import Evaluator

    evaluator = Evaluator(name)

    def ogb_accuracy(pred: Tensor, labels: Tensor) -> float:
        """ogb's accuracy of predicted classes ``pred`` against ``labels``."""
        if labels.numel() == 0:
            return float("nan")
        out = evaluator.eval({"y_true": labels.view(-1, 1), "y_pred": pred.view(-1, 1)})
        return float(out["acc"])

    return ogb_accuracy


def _check_single_label(name: str, meta: dict[str, Any]) -> None:
    """dglkd's graph tasks are single-label classification scored by accuracy."""
    if str(meta.get("eval metric")) != "acc" or int(meta.get("num tasks", 1)) != 1:
        raise DglkdError(
            f"OGB dataset {name!r} has eval metric {meta.get('eval metric')!r} and "
            f"{meta.get('num tasks')} tasks; dglkd supports single-task 'acc' datasets "
            "(ogbn-arxiv, ogbn-products, ogbn-papers100M)"
        )
    if str(meta.get("is hetero")) == "True":
        raise DglkdError(f"OGB dataset {name!r} is heterogeneous; dglkd supports homogeneous graphs")


def _flat_labels(labels: Tensor) -> Tensor:
    """(N, 1) labels as (N,) int64; unlabelled nodes (NaN, as in papers100M) become -1."""
    labels = labels.view(-1)
    if labels.is_floating_point():
        labels = torch.nan_to_num(labels, nan=-1.0)
    return labels.long()


def _marker_info(path: str) -> dict[str, Any]:
    """What the synthetic dataset's marker records (its generator, shape and seed)."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        # Still marked synthetic: an unreadable marker must not make it pass for real.
        return {"marker": path, "unreadable": type(exc).__name__}


def load_ogb(name: str, root: str, meta_dict: dict[str, Any] | None = None) -> GraphTask:
    """An OGB node-property dataset with its official split, made bidirected.

    ``meta_dict`` describes a custom dataset in OGB's layout (ogb's own argument); its
    ``dir_path`` defaults to ``root/<name with - as _>``.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if meta_dict is not None:
        meta_dict = dict(meta_dict)
        dir_path = meta_dict.get("dir_path") or os.path.join(root, "_".join(name.split("-")))
        meta_dict["dir_path"] = os.path.join(root, dir_path)  # a relative path is under root
    meta = _meta_info(name, meta_dict)
    _check_single_label(name, meta)  # before any download
    dataset = _open_dataset(name, root, meta_dict, meta)
    graph, labels = dataset[0]
    # ogbn-arxiv is directed; GCN-style models expect both directions.
    graph = dgl.remove_self_loop(dgl.to_bidirected(graph, copy_ndata=True))
    graph.ndata["feat"] = graph.ndata["feat"].float()
    graph.ndata["label"] = _flat_labels(labels)
    split = dataset.get_idx_split()
    idx = {ours: torch.as_tensor(split[theirs]).long() for ours, theirs in _OGB_SPLIT_NAMES.items()}
    graph.ndata.update(masks_from_indices(graph.num_nodes(), **idx))
    info = {"source": dataset.root, "split": meta.get("split")}
    marker = os.path.join(dataset.root, SYNTHETIC_MARKER)
    if os.path.isfile(marker):
        # Written by dglkd.data.synthetic: results must never pass for the real dataset.
        info["synthetic"] = _marker_info(marker)
    return GraphTask(
        name=name, graph=graph, num_classes=int(dataset.num_classes), metric=_ogb_metric(name), info=info
    )

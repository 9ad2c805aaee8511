"""Write a node-property dataset in OGB's on-disk layout, as ``ogb`` 1.3's
``DglNodePropPredDataset`` reads it (``ogb/nodeproppred/dataset_dgl.py`` and
``ogb/io/read_graph_raw.py``, csv flavour, the one ogbn-arxiv and ogbn-products ship in)::

    <folder>/RELEASE_v1.txt
    <folder>/raw/edge.csv.gz              one "src,dst" row per edge
    <folder>/raw/node-feat.csv.gz         one row of floats per node
    <folder>/raw/node-label.csv.gz        one class id per node
    <folder>/raw/num-node-list.csv.gz     the node count (one graph)
    <folder>/raw/num-edge-list.csv.gz     the edge count
    <folder>/raw/<node_file>.csv.gz       each of the meta's "additional node files"
    <folder>/split/<split>/{train,valid,test}.csv.gz   node ids, one per row

Every csv is gzip-compressed, comma-separated, without a header. ogb reads the raw files
once and caches ``processed/dgl_data_processed``, so a folder is written whole under a
temporary name and then renamed into place: a stale cache never outlives its raw files.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dglkd.errors import DglkdError

SPLITS = ("train", "valid", "test")
# The file that marks a dataset folder dglkd generated (JSON: generator, shape, seed).
SYNTHETIC_MARKER = "DGLKD_SYNTHETIC.json"


def _write_csv(path: Path, rows: np.ndarray, fmt: str) -> None:
    """A gzip csv without header, one row of ``rows`` per line (fast compression: these
    files are read once, by ogb's processing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=1) as handle:
        np.savetxt(handle, rows.reshape(len(rows), -1), fmt=fmt, delimiter=",")


def meta_dict(dir_path: str, num_classes: int, split: str = "random",
              node_files: tuple[str, ...] = (), add_inverse_edge: bool = False) -> dict[str, Any]:
    """An ogb meta_dict describing a dataset written here under a name ogb's master table
    does not know (the keys of ``master.csv``)."""
    return {
        "dir_path": dir_path, "version": 1, "download_name": os.path.basename(dir_path),
        "url": "", "num tasks": 1, "num classes": num_classes, "eval metric": "acc",
        "task type": "multiclass classification", "add_inverse_edge": str(add_inverse_edge),
        "has_node_attr": "True", "has_edge_attr": "False", "split": split,
        "additional node files": ",".join(node_files) or "None",
        "additional edge files": "None", "is hetero": "False", "binary": "False",
    }


def _write_files(folder: Path, edges: np.ndarray, feat: np.ndarray, labels: np.ndarray,
                 split: dict[str, np.ndarray], split_name: str,
                 node_files: dict[str, np.ndarray], note: str, texts: dict[str, str]) -> None:
    raw = folder / "raw"
    _write_csv(raw / "edge.csv.gz", np.asarray(edges, dtype=np.int64), "%d")
    _write_csv(raw / "node-feat.csv.gz", np.asarray(feat, dtype=np.float32), "%.6g")
    _write_csv(raw / "node-label.csv.gz", np.asarray(labels, dtype=np.int64), "%d")
    _write_csv(raw / "num-node-list.csv.gz", np.array([len(labels)]), "%d")
    _write_csv(raw / "num-edge-list.csv.gz", np.array([len(edges)]), "%d")
    for name, values in node_files.items():
        _write_csv(raw / f"{name}.csv.gz", np.asarray(values, dtype=np.int64), "%d")
    for part in SPLITS:
        _write_csv(folder / "split" / split_name / f"{part}.csv.gz",
                   np.sort(np.asarray(split[part], dtype=np.int64)), "%d")
    (folder / "RELEASE_v1.txt").write_text(note + "\n")
    for name, text in texts.items():
        (folder / name).write_text(text)


def write_node_dataset(folder: str | os.PathLike, *, edges: np.ndarray, feat: np.ndarray,
                       labels: np.ndarray, split: dict[str, np.ndarray], split_name: str,
                       node_files: dict[str, np.ndarray] | None = None,
                       note: str = "written by dglkd", texts: dict[str, str] | None = None,
                       replaceable: str | None = None) -> Path:
    """Write one graph's arrays in OGB's layout at ``folder`` and return it.

    ``edges`` (E, 2) as ogb stores them (ogb adds the reverse edges itself when the meta
    says ``add_inverse_edge``); ``split`` maps ``train``/``valid``/``test`` to node ids;
    ``node_files`` are the meta's additional node files by name (each ``node_*``);
    ``texts`` more files at the top of the folder, by name (written before the rename). The
    folder is built beside its target and renamed into place; an existing ``folder`` is
    replaced only when it holds the file ``replaceable`` (a dataset this module wrote),
    never a dataset someone downloaded.
    """
    folder = Path(folder)
    if set(split) != set(SPLITS):
        raise DglkdError(f"split: needs the keys {', '.join(SPLITS)}; got {', '.join(split)}")
    if folder.exists() and not (replaceable and (folder / replaceable).is_file()):
        raise DglkdError(f"{folder} already holds a dataset dglkd did not write; not "
                         "overwriting it: choose another root or remove the folder")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    except OSError as exc:
        raise DglkdError(f"{folder.parent}: cannot write there ({exc.strerror})") from None
    try:
        _write_files(tmp, edges, feat, labels, split, split_name, node_files or {}, note,
                     texts or {})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as exc:
        raise DglkdError(f"{folder}: writing failed ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder

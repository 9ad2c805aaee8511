"""Cora and Citeseer with the public Planetoid split, offline.

The raw Planetoid files ship inside dglkd (``bundled/planetoid``). DGL's own
``CoraGraphDataset``/``CiteseerGraphDataset`` process them: DGL only downloads when its
raw folder ``<raw_dir>/<name>_<sha1(url)[:8]>`` is missing, so the bundled files are
staged there first (named ``ind.<name>.*``, where DGL calls Cora ``cora_v2``).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from dglkd import deps
from dglkd.data.task import GraphTask
from dglkd.errors import DglkdError, quoted

dgl = deps.dgl("the Planetoid datasets (cora, citeseer)")
from dgl.data import CiteseerGraphDataset, CitationGraphDataset, CoraGraphDataset  # noqa: E402

try:
    from dgl.data.utils import _get_dgl_url
except ImportError:  # a private helper; its logic is small enough to mirror

    def _get_dgl_url(file_url: str) -> str:
        repo = os.environ.get("DGL_REPO", "https://data.dgl.ai/")
        return repo.rstrip("/") + "/" + file_url

BUNDLE_DIR = os.path.join(os.path.dirname(__file__), "bundled", "planetoid")
RAW_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
# dglkd name -> (DGL dataset class, the name DGL gives the raw files and folder)
DATASETS = {
    "cora": (CoraGraphDataset, "cora_v2"),
    "citeseer": (CiteseerGraphDataset, "citeseer"),
}


def default_root() -> str:
    """Writable cache folder for the staged raw files and DGL's processed graphs."""
    return os.path.join(os.path.expanduser("~"), ".cache", "dglkd", "planetoid")


def dgl_raw_path(dgl_name: str, raw_dir: str) -> str:
    """The folder where DGL looks for the raw files (``DGLDataset.raw_path``)."""
    urls = getattr(CitationGraphDataset, "_urls", {})
    url = _get_dgl_url(urls.get(dgl_name, f"dataset/{dgl_name}.zip"))
    return os.path.join(raw_dir, dgl_name + "_" + hashlib.sha1(url.encode("utf-8")).hexdigest()[:8])


def _stage_raw_files(name: str, dgl_name: str, target: str) -> None:
    """Copy the bundled raw files to ``target`` atomically (temp folder, then rename),
    so a crash or a concurrent run never leaves DGL a half-filled folder."""
    if os.path.isdir(target):
        return
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    except OSError as exc:
        raise DglkdError(f"planetoid cache folder {parent} is not writable ({exc}); pass another root") from None
    try:
        for part in RAW_PARTS:
            shutil.copyfile(
                os.path.join(BUNDLE_DIR, f"ind.{name}.{part}"), os.path.join(tmp, f"ind.{dgl_name}.{part}")
            )
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(target):  # another process may have won the rename
            raise


FEATURES = ("normalized", "binary")


def load_planetoid(name: str, root: str | None = None, features: str = "normalized") -> GraphTask:
    """Cora or Citeseer with the public split (Cora: 140 train / 500 val / 1000 test).

    ``features="normalized"`` keeps DGL's row-normalised bag of words; ``"binary"``
    recovers the 0/1 word indicators (the form GLNN's and NOSMOG's npz files carry; row
    norms ≈ 4.2 on Cora instead of ≈ 0.24, comparable to DeepWalk position columns). Edges
    are DGL's symmetric citation graph with self loops removed (the engine adds them
    where a model needs them).
    """
    key = name.lower()
    if key not in DATASETS:
        raise DglkdError(f"planetoid dataset {name!r} unknown; allowed: {', '.join(DATASETS)}")
    if features not in FEATURES:
        raise DglkdError(f"features: unknown {quoted(features)}; allowed: {', '.join(FEATURES)}")
    cls, dgl_name = DATASETS[key]
    raw_dir = os.path.abspath(os.path.expanduser(root)) if root else default_root()
    raw_path = dgl_raw_path(dgl_name, raw_dir)
    _stage_raw_files(key, dgl_name, raw_path)
    try:
        dataset = cls(raw_dir=raw_dir, verbose=False)
    except Exception as exc:  # DGL fell back to a download: its layout is not the one staged
        raise DglkdError(
            f"DGL did not find the {key} raw files staged in {raw_path} ({type(exc).__name__}: {exc})"
        ) from None
    graph = dgl.remove_self_loop(dataset[0])
    if features == "binary":  # DGL only rescales each row, so its non-zeros are the words
        graph.ndata["feat"] = (graph.ndata["feat"] > 0).float()
    for split in ("train", "val", "test"):
        graph.ndata[f"{split}_mask"] = graph.ndata[f"{split}_mask"].bool()
    info = {"source": "planetoid (bundled)", "dgl_raw_path": dataset.raw_path}
    return GraphTask(name=key, graph=graph, num_classes=int(dataset.num_classes), info=info)

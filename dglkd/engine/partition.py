"""``dglkd partition``: a config's graph cut into DGL partitions for DistDGL training.

The graph is prepared exactly as the single-machine engine prepares it (the task's split,
self loops, the whole graph's out-degrees GCN normalises by), then written by
:func:`dgl.distributed.partition_graph`. Every node carries ``feat``, ``label`` and the
split masks, so a DistDGL run needs nothing but the partition files: its config says
``data: {name: dist, part_config: DIR/NAME.json, ip_config: FILE}``.

Beside DGL's files a small ``dglkd.json`` records what the partitions cannot say by
themselves (the number of classes, the dataset and config they came from).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from dglkd import deps
from dglkd.errors import DglkdError, quoted

METHODS = ("metis", "random")
META_FILE = "dglkd.json"
# Node data every partition carries (DGL stores it as ``_N/<name>``).
NODE_FIELDS = ("feat", "label", "train_mask", "val_mask", "test_mask")


def halo_hops(config: Any) -> int:
    """Hops of halo nodes to keep per partition: the deepest graph model of the config
    (its sampling depth), at least 1."""
    from dglkd.config import model_depth

    depths = [model_depth(spec) for spec in (config.teacher, config.student)
              if spec.model in ("gcn", "gat", "sage")]
    return max([1, *depths])


def metis_available() -> bool:
    """Whether this DGL build can run METIS (some CPU wheels are built without it)."""
    dgl = deps.dgl("dglkd partition")

    try:
        dgl.metis_partition_assignment(dgl.graph(([0, 1, 2, 3], [1, 2, 3, 0])), 2)
    except Exception:  # noqa: BLE001 - DGL raises a plain DGLError without METIS
        return False
    return True


def prepared_graph(config: Any) -> tuple[Any, Any]:
    """The config's graph as the engine trains on it, and the task it came from."""
    dgl = deps.dgl("dglkd partition")

    from dglkd.engine.tasks import load_task
    from dglkd.models.gnn import attach_out_degrees

    if config.data.is_image:
        raise DglkdError(f"data.name: {config.data.name!r} is an image dataset; only graphs "
                         "are partitioned")
    if config.data.name == "dist":
        raise DglkdError("data.name: 'dist' is already partitioned; partition the config "
                         "of the original dataset")
    task = load_task(config.data, config.seed)
    if task.observed_mask is not None:
        raise DglkdError("data.inductive: DistDGL runs are transductive only; partition a "
                         "config without data.inductive")
    graph = task.graph
    if config.data.self_loop:  # as GraphBackend does, so both see the same neighbourhoods
        graph = dgl.add_self_loop(dgl.remove_self_loop(graph))
    graph = attach_out_degrees(graph)
    missing = [name for name in NODE_FIELDS if name not in graph.ndata]
    if missing:
        raise DglkdError(f"data: {task.name!r} has no node data {', '.join(missing)}")
    # Only what training reads travels: a stray field would be copied into every partition.
    for name in list(graph.ndata.keys()):
        if name not in (*NODE_FIELDS, "_out_degree"):
            graph.ndata.pop(name)
    for name in list(graph.edata.keys()):
        graph.edata.pop(name)
    return graph, task


def partition(config: Any, parts: int, out: str | Path, method: str = "metis",
              graph_name: str | None = None, say: Callable[[str], None] = print) -> Path:
    """Write ``parts`` DGL partitions of the config's graph into ``out``; return the path
    of the partition config (``out/<graph_name>.json``) a ``dist`` config points at.

    ``method``: ``metis`` (fewer cut edges, balanced by training nodes and edges) or
    ``random``; without METIS in this DGL build, ``metis`` falls back to ``random`` with a
    message. Halo nodes are kept for as many hops as the deepest GNN of the config has
    layers, so each partition holds the neighbourhoods its training nodes sample.
    """
    dgl = deps.dgl("dglkd partition")

    if parts < 1:
        raise DglkdError(f"--parts: {parts}; give 1 or more partitions")
    if method not in METHODS:
        raise DglkdError(f"--method: unknown {quoted(method)}; allowed: {', '.join(METHODS)}")
    if method == "metis" and parts > 1 and not metis_available():
        say("partition: this DGL build has no METIS; using --method random instead")
        method = "random"
    graph, task = prepared_graph(config)
    name = graph_name or config.name
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hops = halo_hops(config)
    say(f"partition: {task.name} ({graph.num_nodes()} nodes, {graph.num_edges()} edges) into "
        f"{parts} parts with {method}, {hops}-hop halos → {out}")
    dgl.distributed.partition_graph(
        graph, name, parts, str(out), num_hops=hops, part_method=method,
        # Every partition gets about the same number of training nodes and edges, so the
        # trainers' epochs take about as long (DistDGL's recommendation).
        balance_ntypes=graph.ndata["train_mask"].to(torch.int64), balance_edges=True)
    part_config = (out / f"{name}.json").resolve()
    meta = {"graph_name": name, "dataset": task.name, "num_classes": int(task.num_classes),
            "num_features": int(graph.ndata["feat"].shape[1]),
            "teacher_features": task.teacher_features, "num_parts": parts,
            "method": method, "num_hops": hops, "self_loop": bool(config.data.self_loop),
            "num_nodes": int(graph.num_nodes()), "source_config": config.name}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return part_config


def read_meta(part_config: str | Path) -> dict[str, Any]:
    """What ``dglkd partition`` recorded beside a partition config."""
    part_config = Path(part_config)
    if not part_config.is_file():
        raise DglkdError(f"data.part_config: file not found: {part_config}")
    meta_file = part_config.parent / META_FILE
    if not meta_file.is_file():
        raise DglkdError(f"data.part_config: no {META_FILE} beside {part_config}; write the "
                         "partitions with `dglkd partition`")
    try:
        return json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        raise DglkdError(f"{meta_file}: not valid JSON") from None


__all__ = ["METHODS", "halo_hops", "metis_available", "partition", "read_meta"]

"""From a DataConfig to a task: the config's keys for its dataset, passed to
:func:`dglkd.data.load`."""
from __future__ import annotations

from dglkd.config import DataConfig
from dglkd.data import GraphTask, ImageTask, load
from dglkd.errors import DglkdError


def load_task(cfg: DataConfig, seed: int) -> GraphTask | ImageTask:
    """The task for one run; random splits use ``data.split_seed`` or else the run's seed."""
    options = cfg.applicable()
    split_seed = options.pop("split_seed", None)
    options.pop("self_loop", None)  # the engine adds self loops, not the loader
    name = options.pop("name")
    if name in ("npz", "graph_file", "cifar10", "cifar100") and not options.get("path"):
        # dglkd.data.load("npz") falls back to the bundled Cora; a config says its file
        raise DglkdError(f"data.path: required for dataset {name!r} (the file or folder to load)")
    return load(name, seed=split_seed if split_seed is not None else seed, **options)

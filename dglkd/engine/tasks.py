"""From a DataConfig to a task: the config's keys for its dataset, passed to
:func:`dglkd.data.load`."""
from __future__ import annotations

from dglkd.config import DataConfig
from dglkd.data import GraphTask, ImageTask, load


def load_task(cfg: DataConfig, seed: int) -> GraphTask | ImageTask:
    """The task for one run; random splits use ``data.split_seed`` or else the run's seed."""
    options = cfg.applicable()
    split_seed = options.pop("split_seed", None)
    options.pop("self_loop", None)  # the engine adds self loops, not the loader
    name = options.pop("name")
    return load(name, seed=split_seed if split_seed is not None else seed, **options)

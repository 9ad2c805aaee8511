"""From a DataConfig to a task: the one place that maps config keys onto loaders."""
from __future__ import annotations

from pathlib import Path

from dglkd.config import DataConfig
from dglkd.data.task import GraphTask, ImageTask
from dglkd.errors import DglkdError


def _need(value: str | None, key: str, what: str) -> str:
    if not value:
        raise DglkdError(f"{key}: required for this dataset ({what})")
    return value


def _graph_task(cfg: DataConfig, split_seed: int) -> GraphTask:
    from dglkd.data import npz, ogb, planetoid, splits, synthetic, user

    if cfg.name in ("cora", "citeseer"):
        task = planetoid.load_planetoid(cfg.name, root=cfg.root)
        if cfg.split == "per_class":
            task = splits.resplit_per_class(task, cfg.train_per_class, cfg.val_per_class,
                                            split_seed)
        return task
    if cfg.name == "npz":
        return npz.load_npz(_need(cfg.path, "data.path", "an .npz file"), lcc=cfg.lcc,
                            split="per_class",
                            train_per_class=cfg.train_per_class,
                            val_per_class=cfg.val_per_class, seed=split_seed)
    if cfg.name.startswith("ogbn-"):
        return ogb.load_ogb(cfg.name, root=cfg.root or str(Path("data") / "ogb"))
    if cfg.name == "graph_file":
        return user.load_graph_file(_need(cfg.path, "data.path", "a dgl.save_graphs file"))
    return synthetic.synthetic_node_graph(num_nodes=cfg.num_nodes, num_edges=cfg.num_edges,
                                          seed=split_seed)


def _image_task(cfg: DataConfig, split_seed: int) -> ImageTask:
    from dglkd.data import images

    if cfg.name == "mnist":
        return images.load_mnist(cfg.root, train_size=cfg.train_size, val_size=cfg.val_size,
                                 seed=split_seed)
    if cfg.name == "digits":
        return images.load_digits(train_size=cfg.train_size, val_size=cfg.val_size,
                                  seed=split_seed)
    return images.load_cifar(cfg.name, _need(cfg.path, "data.path", "the CIFAR folder"),
                             val_size=cfg.val_size, seed=split_seed)


def load_task(cfg: DataConfig, seed: int) -> GraphTask | ImageTask:
    """The task for one run; random splits use ``data.split_seed`` or else the run's seed."""
    split_seed = cfg.split_seed if cfg.split_seed is not None else seed
    if cfg.is_image:
        return _image_task(cfg, split_seed)
    task = _graph_task(cfg, split_seed)
    if cfg.inductive:
        from dglkd.data.splits import make_inductive

        task = make_inductive(task, cfg.hidden_test_share, split_seed)
    return task

"""``dglkd.data.load(name, ...)``: every dataset dglkd knows, by name, as the task the
engine trains on (a :class:`GraphTask` or an :class:`ImageTask`)."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from dglkd import deps
from dglkd.data.task import GraphTask, ImageTask
from dglkd.errors import DglkdError, quoted

BUNDLED_CORA_NPZ = Path(__file__).parent / "bundled" / "npz" / "cora.npz"


def _planetoid(name: str, root: str | None = None, split: str = "public",
               train_per_class: int = 20, val_per_class: int = 30, features: str = "normalized",
               seed: int = 0) -> GraphTask:
    from dglkd.data import planetoid, splits

    task = planetoid.load_planetoid(name, root=root, features=features)
    if split == "per_class":
        task = splits.resplit_per_class(task, train_per_class, val_per_class, seed)
    elif split != "public":
        raise DglkdError(f"split: unknown {quoted(split)}; allowed: public, per_class")
    return task


def _npz(name: str, path: str | None = None, lcc: bool = True, train_per_class: int = 20,
         val_per_class: int = 30, seed: int = 0) -> GraphTask:
    from dglkd.data import npz

    return npz.load_npz(str(path or BUNDLED_CORA_NPZ), lcc=lcc, split="per_class",
                        train_per_class=train_per_class, val_per_class=val_per_class,
                        seed=seed)


def _ogb(name: str, root: str | None = None, seed: int = 0) -> GraphTask:
    from dglkd.data import ogb

    return ogb.load_ogb(name, root=root or str(Path("data") / "ogb"))


def _graph_file(name: str, path: str | None = None, seed: int = 0) -> GraphTask:
    from dglkd.data import user

    if not path:
        raise DglkdError("path: required for graph_file (a dgl.save_graphs file)")
    return user.load_graph_file(path)


def _synthetic(name: str, like: str = "ogbn-arxiv", scale: float = 1.0,
               seed: int = 0) -> GraphTask:
    from dglkd.data import synthetic

    return synthetic.ogb_like(like, scale, seed)


def _mnist(name: str, root: str | None = None, train_size: int = 1000, val_size: int = 1000,
           seed: int = 0) -> ImageTask:
    from dglkd.data import images

    return images.load_mnist(root, train_size=train_size, val_size=val_size, seed=seed)


def _digits(name: str, train_size: int = 1000, val_size: int = 300, seed: int = 0) -> ImageTask:
    from dglkd.data import images

    return images.load_digits(train_size=train_size, val_size=val_size, seed=seed)


def _cifar(name: str, path: str | None = None, val_size: int = 5000, seed: int = 0) -> ImageTask:
    from dglkd.data import images

    if not path:
        raise DglkdError(f"path: required for {name} (the extracted cifar python folder)")
    return images.load_cifar(name, path, val_size=val_size, seed=seed)


_LOADERS: dict[str, Callable[..., Any]] = {
    "cora": _planetoid, "citeseer": _planetoid, "npz": _npz, "graph_file": _graph_file,
    "synthetic": _synthetic, "mnist": _mnist, "digits": _digits,
    "cifar10": _cifar, "cifar100": _cifar,
}
# Loaders of DGLGraphs: DGL is checked before one runs, so its absence is named by dataset.
_GRAPH_LOADERS = (_planetoid, _npz, _ogb, _graph_file, _synthetic)


def dataset_names() -> list[str]:
    return [*_LOADERS, "ogbn-*"]


def _loader(name: str) -> Callable[..., Any]:
    if name.startswith("ogbn-"):
        return _ogb
    if name not in _LOADERS:
        raise DglkdError(f"dataset: unknown {quoted(name)}; allowed: {', '.join(dataset_names())}")
    return _LOADERS[name]


def load(name: str, *, seed: int = 0, inductive: bool = False,
         hidden_test_share: float = 0.2, positional: dict[str, Any] | None = None,
         **options: Any) -> GraphTask | ImageTask:
    """A dataset by name, as the task the engine trains on.

    Graphs: ``cora``, ``citeseer`` (bundled; ``split="per_class"`` redraws 20/30 per class
    with ``seed``; ``features="binary"`` for the 0/1 bag of words instead of DGL's
    row-normalised one), ``npz`` (bundled cora.npz unless ``path``; largest connected component,
    20/30 per class), ``ogbn-*`` (``root``), ``graph_file`` (``path``), ``synthetic``
    (an OGB-shaped graph generated in memory: ``like`` ``ogbn-arxiv`` or ``ogbn-products``,
    ``scale`` of its node and edge counts; ``seed`` draws the graph). ``inductive=True`` hides ``hidden_test_share``
    of the test nodes from training (GLNN's inductive setting). Images: ``mnist``
    (bundled), ``digits``, ``cifar10``/``cifar100`` (``path``), with ``train_size`` /
    ``val_size``. Unknown options are an error naming the allowed ones.

    ``positional`` (graphs): DeepWalk position features (NOSMOG) appended to every node's
    features, e.g. ``positional={"dim": 64, "cache_dir": "cache"}`` (constants:
    :class:`dglkd.data.positional.PositionalParams`); learned on the observed graph only
    when ``inductive``, seeded by ``seed``. By default (``to: student``) the engine's
    teacher reads the content columns only (``task.features_for("teacher")``).
    """
    loader = _loader(name)
    params = inspect.signature(loader).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [p for p in params if p not in ("name", "shape")]
    for option in options:
        if option not in params and not takes_any:
            raise DglkdError(f"{option}: not an option of dataset {name!r}; allowed: "
                             f"{', '.join(allowed + ['inductive', 'hidden_test_share', 'positional'])}")
    if loader in _GRAPH_LOADERS:
        deps.dgl(f"data.name {name!r} (a graph dataset)")
    task = loader(name, seed=seed, **options)
    if inductive:
        if isinstance(task, ImageTask):
            raise DglkdError(f"inductive: applies to graph datasets, not {name!r}")
        from dglkd.data.splits import make_inductive

        task = make_inductive(task, hidden_test_share, seed)
    if positional is not None:
        if isinstance(task, ImageTask):
            raise DglkdError(f"positional: applies to graph datasets, not {name!r}")
        from dglkd.data.positional import add_positional_features

        # after the inductive split, so that DeepWalk sees the observed nodes only
        task = add_positional_features(task, positional, seed)
    return task


__all__ = ["load", "dataset_names"]

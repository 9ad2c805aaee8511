"""Validated experiment configs (YAML recipes + ``--set key=value`` overrides).

Every key an experiment depends on is a field here; unknown keys, wrong types and
unknown dataset/model/method names are rejected on load with one line naming the key.
The config sits beside the engine: it reads the registries of the lower layers.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import pydantic
import yaml

from dglkd import deps
from dglkd.errors import DglkdError, describe_validation_error
from dglkd.graphs.propagation import CorrectSmoothParams
from dglkd.methods.recipe import TermSpec, check_recipe, recipe_spec
from dglkd.models import check_model_options
from dglkd.models.registry import MODELS


class Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True,
                                       allow_inf_nan=False)


GRAPH_DATASETS = ("cora", "citeseer", "npz", "graph_file", "synthetic", "dist")
IMAGE_DATASETS = ("mnist", "digits", "cifar10", "cifar100")

# The data keys each dataset family reads; any other key set for it is an error, so a
# key that would do nothing never loads silently.
_GRAPH_KEYS = {"name", "split_seed", "inductive", "hidden_test_share", "self_loop",
               "positional"}
DATA_KEYS = {
    "planetoid": _GRAPH_KEYS | {"root", "split", "train_per_class", "val_per_class", "features"},
    "npz": _GRAPH_KEYS | {"path", "lcc", "train_per_class", "val_per_class"},
    "ogb": _GRAPH_KEYS | {"root"},
    "graph_file": _GRAPH_KEYS | {"path"},
    "synthetic": _GRAPH_KEYS | {"like", "scale"},
    # A graph already partitioned by ``dglkd partition`` and served by DistDGL: the split,
    # self loops and features were fixed when it was partitioned.
    "dist": {"name", "part_config", "ip_config", "graph_name"},
    "mnist": {"name", "split_seed", "root", "train_size", "val_size"},
    "digits": {"name", "split_seed", "train_size", "val_size"},
    "cifar": {"name", "split_seed", "path", "val_size"},
}


def data_family(name: str) -> str:
    if name.startswith("ogbn-"):
        return "ogb"
    if name in ("cora", "citeseer"):
        return "planetoid"
    if name in ("cifar10", "cifar100"):
        return "cifar"
    return name


class DataConfig(Strict):
    name: str = "cora"
    path: Optional[str] = None
    root: Optional[str] = None
    split: Literal["public", "per_class"] = "public"
    # cora/citeseer: DGL's row-normalised bag of words, or the 0/1 word indicators
    # (what GLNN's and NOSMOG's npz recipes were tuned on)
    features: Literal["normalized", "binary"] = "normalized"
    lcc: bool = True
    train_per_class: int = pydantic.Field(20, ge=1, le=1_000_000)
    val_per_class: int = pydantic.Field(30, ge=0, le=1_000_000)
    split_seed: Optional[int] = pydantic.Field(None, ge=0, lt=2**32)
    inductive: bool = False
    hidden_test_share: float = pydantic.Field(0.2, gt=0.0, lt=1.0)
    self_loop: bool = True
    train_size: int = pydantic.Field(1000, ge=1, le=100_000_000)
    val_size: int = pydantic.Field(1000, ge=0, le=100_000_000)
    # data.name "synthetic": the OGB dataset it is shaped like, and the share of its node
    # and edge counts (dglkd.data.synthetic).
    like: Literal["ogbn-arxiv", "ogbn-products"] = "ogbn-arxiv"
    scale: float = pydantic.Field(1.0, gt=0.0, le=1.0)
    # NOSMOG's DeepWalk position features appended to every node's features, e.g.
    # {dim: 128}; see dglkd.data.positional.PositionalParams.
    positional: Optional[dict[str, Any]] = None
    # data.name "dist": the partition config written by ``dglkd partition`` and DGL's
    # ip_config ("IP PORT" per machine); graph_name defaults to the partition config's.
    part_config: Optional[str] = None
    ip_config: Optional[str] = None
    graph_name: Optional[str] = None

    @pydantic.field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        allowed = GRAPH_DATASETS + IMAGE_DATASETS
        if name.startswith("ogbn-"):
            return name
        if name not in allowed:
            raise ValueError(f"unknown dataset; allowed: {', '.join(allowed)}, ogbn-*")
        return name

    @property
    def is_image(self) -> bool:
        return self.name in IMAGE_DATASETS

    def applicable(self) -> dict[str, Any]:
        """The keys this dataset reads, with their values (what a run folder records)."""
        keys = DATA_KEYS[data_family(self.name)]
        return {k: v for k, v in self.model_dump(mode="json").items() if k in keys}


class TrainConfig(Strict):
    epochs: int = pydantic.Field(200, ge=1, le=100_000)
    lr: float = pydantic.Field(0.01, gt=0)
    # Above 1 an L2 step shrinks every weight past zero.
    weight_decay: float = pydantic.Field(5e-4, ge=0, le=1.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = pydantic.Field(0.9, ge=0, lt=1)
    schedule: Literal["none", "step", "cosine"] = "none"
    milestones: list[pydantic.conint(ge=1, le=100_000)] = []
    gamma: float = pydantic.Field(0.1, gt=0, le=1)
    # Image data: images per batch (64 when absent). Graphs: seed nodes per batch; absent
    # means one full-graph step per epoch.
    batch_size: Optional[int] = pydantic.Field(None, ge=1, le=1 << 30)
    fanouts: Optional[list[int]] = None
    num_workers: int = pydantic.Field(0, ge=0, le=64)
    eval_batch_size: int = pydantic.Field(4096, ge=1, le=1 << 30)
    checkpoint_every: int = pydantic.Field(10, ge=1, le=100_000)
    # Early stopping: end the phase after this many epochs without a better validation
    # score, keeping the best epoch's model (GLNN's code uses 50); absent: every epoch.
    patience: Optional[int] = pydantic.Field(None, ge=1, le=100_000)

    @pydantic.field_validator("fanouts")
    @classmethod
    def _fanouts(cls, fanouts: Optional[list[int]]) -> Optional[list[int]]:
        if fanouts is not None and (not fanouts or any(f == 0 or f < -1 or f > 1_000_000 for f in fanouts)):
            raise ValueError("one positive fan-out per GNN layer, or -1 for all neighbours")
        return fanouts


class ModelConfig(pydantic.BaseModel):
    """``model`` plus that model's own options (checked against its builder)."""

    model_config = pydantic.ConfigDict(extra="allow")

    model: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MethodConfig(pydantic.BaseModel):
    """A recipe: ``terms: {label: weight | {name?, weight?, **constants}}``, or ``name`` (a
    method's paper recipe) plus that method's constants; see :mod:`dglkd.methods.recipe`."""

    model_config = pydantic.ConfigDict(extra="allow")

    def raw(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def spec(self, key: str = "method") -> dict[str, TermSpec]:
        return recipe_spec(self.raw(), key)


class LogConfig(Strict):
    tensorboard: bool = True
    progress: bool = True
    embedding_projector: bool = True


class Config(Strict):
    """A whole experiment: data, teacher, student, method, training, seeds."""

    name: str = pydantic.Field("experiment", min_length=1, max_length=200)
    # numpy seeds lie in [0, 2**32): seed + n_runs - 1 must too.
    seed: int = pydantic.Field(0, ge=0, lt=2**31)
    n_runs: int = pydantic.Field(3, ge=1, le=1000)
    device: str = "cpu"
    data: DataConfig = DataConfig()
    teacher: ModelConfig = ModelConfig(model="gcn")
    student: ModelConfig = ModelConfig(model="mlp")
    imports: list[str] = []
    method: MethodConfig = MethodConfig(name="kd")
    train: TrainConfig = TrainConfig()
    teacher_train: TrainConfig = TrainConfig()
    baseline: bool = True
    compare: dict[str, MethodConfig] = {}
    cache_dir: Optional[str] = None
    # Graphs: the teacher's soft labels refined by Correct and Smooth over the training
    # graph with the training labels before any student learns from them, e.g. {} for the
    # defaults; see dglkd.graphs.propagation.CorrectSmoothParams.
    teacher_refine: Optional[CorrectSmoothParams] = None
    # Mini-batch graphs: the teacher's soft labels are stored memory-mapped in the cache;
    # float16 halves the files.
    soft_label_dtype: Literal["float32", "float16"] = "float32"
    log: LogConfig = LogConfig()

    @pydantic.field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        problem = device_problem(device)
        if problem:
            raise ValueError(problem)
        return device

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n_runs)]


def device_problem(name: str) -> str | None:
    """Why ``name`` is not a device this machine can train on, or None."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        return "unknown device; allowed: cpu, cuda, cuda:N, mps"
    if device.type == "cpu":
        return None if device.index in (None, 0) else "one CPU device: use cpu"
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            return "this torch/DGL build sees no CUDA GPU; use cpu"
        return None if (device.index or 0) < count else f"this machine has {count} GPU(s)"
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else "MPS is not available here"
    return f"{device.type!r} devices are not supported; allowed: cpu, cuda, cuda:N, mps"


def import_modules(modules: list[str], key: str = "imports") -> None:
    """Import a user's modules (their ``register_method`` calls run) from the current
    folder or the installed packages."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except DglkdError:
            raise
        except Exception as exc:  # the user's module: name it and its first problem
            raise DglkdError(f"{key}: cannot import {module!r}: {type(exc).__name__}: "
                             f"{exc}") from None


def model_depth(spec: ModelConfig) -> int:
    """The number of layers a graph model of this spec has (its option or default)."""
    default = inspect.signature(MODELS.get(spec.model)).parameters.get("layers")
    return int(spec.options().get("layers", default.default if default else 0))


def _check_models(config: Config) -> None:
    for side in ("teacher", "student"):
        spec: ModelConfig = getattr(config, side)
        check_model_options(spec.model, spec.options(), side)


def _check_training(config: Config) -> None:
    for key, side in (("teacher_train", "teacher"), ("train", "student")):
        train: TrainConfig = getattr(config, key)
        spec: ModelConfig = getattr(config, side)
        if config.data.is_image and train.fanouts is not None:
            raise DglkdError(f"{key}.fanouts: only graph datasets sample neighbours "
                             f"(data.name is {config.data.name!r})")
        if train.fanouts is not None and train.batch_size is None:
            raise DglkdError(f"{key}.fanouts: set {key}.batch_size too (seed nodes per "
                             "batch); without it training is full-batch")
        graph_model = spec.model in ("gcn", "gat", "sage")
        if graph_model and train.fanouts is not None and len(train.fanouts) != model_depth(spec):
            raise DglkdError(f"{key}.fanouts: {len(train.fanouts)} fan-outs for a "
                             f"{model_depth(spec)}-layer {spec.model} ({side}.layers); give "
                             "one per layer")


def _check_data(config: Config) -> None:
    allowed = DATA_KEYS[data_family(config.data.name)]
    for key in sorted(config.data.model_fields_set - allowed):
        raise DglkdError(f"data.{key}: does not apply to dataset {config.data.name!r}; "
                         f"its keys: {', '.join(sorted(allowed))}")
    if not config.data.is_image:  # refused at load, before a run folder exists
        deps.dgl(f"data.name {config.data.name!r} (a graph dataset)")


def _check_refine(config: Config) -> None:
    if config.teacher_refine is not None and (config.data.is_image or config.data.name == "dist"):
        raise DglkdError(f"teacher_refine: propagates over a whole graph in memory; it does "
                         f"not apply to dataset {config.data.name!r}")


def _check_methods(config: Config) -> None:
    check_recipe(config.method.raw(), "method")
    for label, variant in config.compare.items():
        check_recipe(variant.raw(), f"compare.{label}")


def config_from_dict(raw: dict[str, Any], where: str = "config") -> Config:
    """The validated config; ``where`` (the file) is what a malformed key's error names."""
    check_keys(raw, where)
    try:
        config = Config(**raw)
    except pydantic.ValidationError as exc:
        raise DglkdError(describe_validation_error(exc, allowed=_allowed_at(exc))) from None
    import_modules(config.imports)
    _check_data(config)
    _check_models(config)
    _check_training(config)
    _check_refine(config)
    _check_methods(config)
    return config


def _allowed_at(exc: pydantic.ValidationError) -> list[str] | None:
    """Keys allowed at the location of the first error (for unknown-key messages)."""
    model: Any = Config
    for part in exc.errors()[0]["loc"][:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field.annotation
    return list(model.model_fields) if hasattr(model, "model_fields") else None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], typed value); the value is parsed as YAML."""
    if "=" not in item:
        raise DglkdError(f"--set {item!r}: expected key=value, e.g. train.epochs=100")
    key, text = item.split("=", 1)
    if not key.strip():
        raise DglkdError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise DglkdError(f"--set {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return raw


MAX_DEPTH = 16  # the schema nests 4 levels; anything far deeper is not a config


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path)
    if file.is_dir():
        raise DglkdError(f"{file}: a folder; give a YAML config file (e.g. "
                         "configs/cora_gcn_glnn.yaml), or --resume RUN_DIR for a run folder")
    if not file.is_file():
        raise DglkdError(f"config file not found: {file}")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DglkdError(f"{file}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                         f"offset {exc.start}); save the config as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise DglkdError(f"{file}{where}: not valid YAML") from None
    except RecursionError:
        raise DglkdError(f"{file}: nested deeper than YAML can read; a config nests "
                         f"{MAX_DEPTH} levels at most") from None
    # An empty file would otherwise run the default recipe, which nobody asked for.
    if raw is None or raw == {}:
        raise DglkdError(f"{file}: empty (no keys); write the experiment's keys, e.g. "
                         "those of configs/cora_gcn_glnn.yaml")
    if not isinstance(raw, dict):
        raise DglkdError(f"{file}: the top level must be a mapping of keys, not a "
                         f"{type(raw).__name__}")
    raw.setdefault("name", file.stem)
    return raw


def check_keys(node: Any, where: str, depth: int = 0) -> None:
    """Every mapping key a string, no deeper than ``MAX_DEPTH``: what YAML allows beyond
    that (``1:``, ``null:``, thousands of levels) is no config."""
    if depth > MAX_DEPTH:
        raise DglkdError(f"{where}: nested more than {MAX_DEPTH} levels deep; a config "
                         "nests 4 at most")
    children = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for key, child in children:
        if isinstance(node, dict) and not isinstance(key, str):
            raise DglkdError(f"{where}: key {key!r} is not a name; keys are words such as "
                             "train or epochs")
        check_keys(child, where, depth + 1)


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> Config:
    """Read, override and validate a YAML config."""
    return config_from_dict(apply_overrides(read_yaml(path), list(overrides)), str(path))


def dump_config(config: Config) -> str:
    """The config as YAML that loads back to the same config (data: its own keys only)."""
    raw = config.model_dump(mode="json")
    raw["data"] = config.data.applicable()
    return yaml.safe_dump(raw, sort_keys=False)

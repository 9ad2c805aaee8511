"""Validated experiment configs (YAML recipes + ``--set key=value`` overrides).

Every key an experiment depends on is a field here; unknown keys, wrong types and
unknown dataset/model/method names are rejected on load with one line naming the key.
The config sits beside the engine: it reads the registries of the lower layers.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal, Optional

import pydantic
import yaml

from dglkd.errors import DglkdError, describe_validation_error
from dglkd.methods.base import parse_params
from dglkd.models import model_options
from dglkd.models.registry import MODELS


class Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)


GRAPH_DATASETS = ("cora", "citeseer", "npz", "graph_file", "synthetic")
IMAGE_DATASETS = ("mnist", "digits", "cifar10", "cifar100")


class DataConfig(Strict):
    name: str = "cora"
    path: Optional[str] = None
    root: Optional[str] = None
    split: Literal["public", "per_class"] = "public"
    lcc: bool = True
    train_per_class: int = pydantic.Field(20, ge=1)
    val_per_class: int = pydantic.Field(30, ge=0)
    split_seed: Optional[int] = None
    inductive: bool = False
    hidden_test_share: float = pydantic.Field(0.2, gt=0.0, lt=1.0)
    self_loop: bool = True
    train_size: int = pydantic.Field(1000, ge=1)
    val_size: int = pydantic.Field(1000, ge=0)
    num_nodes: int = pydantic.Field(169_343, ge=10)
    num_edges: int = pydantic.Field(1_166_243, ge=10)

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


class TrainConfig(Strict):
    epochs: int = pydantic.Field(200, ge=1)
    lr: float = pydantic.Field(0.01, gt=0)
    weight_decay: float = pydantic.Field(5e-4, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = 0.9
    schedule: Literal["none", "step", "cosine"] = "none"
    milestones: list[int] = []
    gamma: float = 0.1
    batch_size: int = pydantic.Field(64, ge=1)
    checkpoint_every: int = pydantic.Field(10, ge=1)


class ModelConfig(pydantic.BaseModel):
    """``model`` plus that model's own options (checked against its builder)."""

    model_config = pydantic.ConfigDict(extra="allow")

    model: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MethodConfig(pydantic.BaseModel):
    """``name`` plus that method's own constants (checked against its Params)."""

    model_config = pydantic.ConfigDict(extra="allow")

    name: str = "kd"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LogConfig(Strict):
    tensorboard: bool = True
    progress: bool = True
    embedding_projector: bool = True


class Config(Strict):
    """A whole experiment: data, teacher, student, method, training, seeds."""

    name: str = "experiment"
    seed: int = 0
    n_runs: int = pydantic.Field(3, ge=1)
    device: str = "cpu"
    data: DataConfig = DataConfig()
    teacher: ModelConfig = ModelConfig(model="gcn")
    student: ModelConfig = ModelConfig(model="mlp")
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    teacher_train: TrainConfig = TrainConfig()
    baseline: bool = True
    compare: dict[str, MethodConfig] = {}
    cache_dir: Optional[str] = None
    log: LogConfig = LogConfig()

    @pydantic.field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        import torch

        try:
            torch.device(device)
        except RuntimeError:
            raise ValueError("unknown device; allowed: cpu, cuda, cuda:N, mps") from None
        return device

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n_runs)]


def _check_names(config: Config) -> None:
    for side in ("teacher", "student"):
        spec: ModelConfig = getattr(config, side)
        MODELS.get(spec.model, key=f"{side}.model")
        allowed = model_options(spec.model)
        for option in spec.options():
            if option not in allowed:
                raise DglkdError(f"{side}.{option}: unknown option for model {spec.model!r}; "
                                 f"allowed: model, {', '.join(allowed)}")
    parse_params(config.method.name, config.method.params())
    for label, variant in config.compare.items():
        parse_params(variant.name, variant.params(), key=f"compare.{label}")


def config_from_dict(raw: dict[str, Any]) -> Config:
    try:
        config = Config(**raw)
    except pydantic.ValidationError as exc:
        raise DglkdError(describe_validation_error(exc, allowed=_allowed_at(exc))) from None
    _check_names(config)
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


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise DglkdError(f"config file not found: {file}")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise DglkdError(f"{file}{where}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise DglkdError(f"{file}: the top level must be a mapping of keys")
    raw.setdefault("name", file.stem)
    return raw


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> Config:
    """Read, override and validate a YAML config."""
    return config_from_dict(apply_overrides(read_yaml(path), list(overrides)))


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

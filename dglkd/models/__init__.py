"""Models: GNNs, the MLP and CIFAR-style CNNs, looked up by name."""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

from dglkd.errors import DglkdError
from dglkd.models import gnn  # noqa: F401  (registers the graph models)
from dglkd.models.registry import MODELS
from dglkd.models.tap import FeatureTap, resolve_module

# The CNN package registers the image models; it is optional while being built.
try:
    importlib.import_module("dglkd.models.cnn")
except ModuleNotFoundError as exc:  # pragma: no cover
    if exc.name != "dglkd.models.cnn":
        raise


def model_options(name: str) -> list[str]:
    """The options a model accepts besides ``num_classes`` and ``in_features``."""
    params = inspect.signature(MODELS.get(name)).parameters
    return [p for p in params if p not in ("num_classes", "in_features")]


def build_model(name: str, num_classes: int, in_features: Any, key: str = "model",
                **options: Any) -> nn.Module:
    """Build a registered model; an unknown option raises an error naming it."""
    builder = MODELS.get(name, key=f"{key}.model")
    allowed = model_options(name)
    for option in options:
        if option not in allowed:
            raise DglkdError(
                f"{key}.{option}: unknown option for model {name!r}; allowed: {', '.join(allowed)}"
            )
    return builder(num_classes, in_features, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "FeatureTap", "build_model", "count_parameters", "model_options",
           "resolve_module"]

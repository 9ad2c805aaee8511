"""Models: GNNs, the MLP and CIFAR-style CNNs, looked up by name."""
from __future__ import annotations

import importlib
import inspect
import typing
from typing import Any

import pydantic
import torch
from torch import nn

from dglkd.errors import DglkdError, describe_validation_error
from dglkd.models import gnn  # noqa: F401  (registers the graph models)
from dglkd.models.gnn import LayerStack
from dglkd.models.registry import MODELS
from dglkd.models.tap import FeatureTap, resolve_module
from dglkd.resources import TRAINING_BYTES_PER_PARAMETER, check_fits

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


def check_model_options(name: str, options: dict[str, Any], key: str = "model") -> dict[str, Any]:
    """The options validated against the builder's annotations (see
    :mod:`dglkd.models.registry`); an unknown option or a value the model cannot be built
    with is a one-line error naming ``key.option``."""
    builder = MODELS.get(name, key=f"{key}.model")
    allowed = model_options(name)
    hints = typing.get_type_hints(inspect.unwrap(builder), include_extras=True)
    checked = {}
    for option, value in options.items():
        if option not in allowed:
            raise DglkdError(f"{key}.{option}: unknown option for model {name!r}; allowed: "
                             f"model, {', '.join(allowed)}")
        checked[option] = value
        if option in hints:
            try:
                checked[option] = pydantic.TypeAdapter(hints[option]).validate_python(value)
            except pydantic.ValidationError as exc:
                raise DglkdError(describe_validation_error(exc, f"{key}.{option}")) from None
    return checked


def build_model(name: str, num_classes: int, in_features: Any, key: str = "model",
                input_columns: int | None = None, **options: Any) -> nn.Module:
    """Build a registered model after checking its options and its size: a model whose
    weights, gradients and optimizer state would not fit in this machine's memory is
    refused before anything is allocated. ``input_columns``: the model is built for, and
    reads, only the first this many of the ``in_features`` columns it is given."""
    builder = MODELS.get(name, key=f"{key}.model")
    options = check_model_options(name, options, key)
    width = in_features if input_columns is None else input_columns
    size = _meta_size(builder, num_classes, width, options, key) or 0
    check_fits(size * TRAINING_BYTES_PER_PARAMETER,
               f"{key}: training a {name} of {size:,} parameters",
               f"lower {key}.hidden or {key}.layers")
    model = builder(num_classes, width, **options)
    if input_columns is not None and input_columns != in_features:
        if not isinstance(model, LayerStack):
            raise DglkdError(f"{key}.model: {name!r} cannot be kept to the first "
                             f"{input_columns} feature columns (data.positional.to: student "
                             "needs a dglkd graph model for it); use to: both")
        model.input_columns = input_columns
    return model


def _meta_size(builder: Any, num_classes: int, in_features: Any, options: dict[str, Any],
               key: str) -> int | None:
    """The parameter count of the model built on the meta device: no memory behind
    layers that honour it (DGL's convs do not; the graph builders check their size before
    building, see ``gnn._widths``)."""
    try:
        # Layers that ignore the meta device initialise real weights from the global
        # generator: fork it, so the estimate leaves the run's random stream untouched.
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return count_parameters(builder(num_classes, in_features, **options))
    except DglkdError as exc:  # the builder's own size check: name the side
        raise DglkdError(f"{key}: {exc}") from None
    except Exception:  # a user's builder that cannot run on meta tensors: no estimate,
        return None    # the real build below is then the only check


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "FeatureTap", "build_model", "check_model_options", "count_parameters",
           "model_options", "resolve_module"]

"""Model registry: builders looked up by the names configs use.

A builder is called as ``builder(num_classes, in_features, **options)`` where
``in_features`` is the node-feature width (graph models) or the image shape (C, H, W)
(image models), and returns an ``nn.Module``. Graph models are called as
``model(graph, feat)``; image models as ``model(images)``. Both return logits; hidden
features are read with :class:`dglkd.models.tap.FeatureTap` by module path or by one of the
names in the model's ``feature_aliases``.
"""
from __future__ import annotations

from typing import Annotated, Callable, Literal

import pydantic
from torch import nn

from dglkd.registry import Registry

ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model")


# Option types of the builders: the config checks every option against its builder's
# annotation, so a value the model cannot be built with is refused at load, by key.
Width = Annotated[int, pydantic.Field(strict=True, ge=1, le=1 << 16)]
Depth = Annotated[int, pydantic.Field(strict=True, ge=1, le=64)]
Heads = Annotated[int, pydantic.Field(strict=True, ge=1, le=64)]
Rate = Annotated[float, pydantic.Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
Slope = Annotated[float, pydantic.Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Norm = Literal["none", "batch", "layer"]
Aggregator = Literal["mean", "gcn", "pool", "lstm"]

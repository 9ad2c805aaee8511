"""Model registry: builders looked up by the names configs use.

A builder is called as ``builder(num_classes, in_features, **options)`` where
``in_features`` is the node-feature width (graph models) or the image shape (C, H, W)
(image models), and returns an ``nn.Module``. Graph models are called as
``model(graph, feat)``; image models as ``model(images)``. Both return logits; hidden
features are read with :class:`dglkd.models.tap.FeatureTap` by module path or by one of the
names in the model's ``feature_aliases``.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from dglkd.registry import Registry

ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model")

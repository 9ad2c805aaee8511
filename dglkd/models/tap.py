"""Capture named hidden features with forward hooks: no model rewrites needed.

A name is a module path (``layers.1``, ``layer3``, ``pool``) or an alias a model declares
in ``feature_aliases``; ``logits`` is the model's output itself. Outputs that are tuples
contribute their first element. Features keep their shape (a GAT layer gives (N, heads,
D), a CNN stage (B, C, H, W)); methods flatten what they need as vectors.
"""
from __future__ import annotations

from typing import Any, Iterable

from torch import Tensor, nn

from dglkd.errors import DglkdError


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    # A DistributedDataParallel wrapper names the user's model ``module``: paths and
    # aliases are the model's own.
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    path = getattr(model, "feature_aliases", {}).get(name, name)
    modules = dict(model.named_modules())
    if path not in modules:
        known = sorted(set(getattr(model, "feature_aliases", {})) | {n for n in modules if n})
        raise DglkdError(
            f"feature {name!r}: no module at that path in {type(model).__name__}; "
            f"known: {', '.join(known[:40])}"
        )
    return modules[path]


class FeatureTap:
    """Records the outputs of named modules during every forward pass of ``model``."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.features: dict[str, Tensor] = {}
        self._handles = []
        for name in dict.fromkeys(n for n in names if n != "logits"):
            module = resolve_module(model, name)
            self._handles.append(module.register_forward_hook(self._recorder(name)))

    def _recorder(self, name: str):
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            self.features[name] = tensor

        return record

    def pop(self) -> dict[str, Tensor]:
        """The features of the last forward pass (and forget them)."""
        features, self.features = self.features, {}
        return features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

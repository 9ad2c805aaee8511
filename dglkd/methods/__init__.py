"""Distillation methods: one module per method, each registering one class.

Every module in this package is imported on first use, so a new method is one new file
(plus its config) and nothing else.
"""
from __future__ import annotations

import importlib
import pkgutil

from dglkd.methods.base import (
    METHODS,
    DistillBatch,
    DistillMethod,
    Knowledge,
    MethodContext,
    MethodParams,
    build_method,
    register_method,
)

_SUPPORT_MODULES = {"base", "functional", "memory"}


def _import_all_methods() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SUPPORT_MODULES:
            importlib.import_module(f"{__name__}.{info.name}")


_import_all_methods()

__all__ = [
    "METHODS",
    "DistillBatch",
    "DistillMethod",
    "Knowledge",
    "MethodContext",
    "MethodParams",
    "build_method",
    "register_method",
]

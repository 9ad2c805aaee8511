"""Distillation methods: one module per method, each registering one class.

Every module in this package is imported on first use, so a new method is one new file
(plus its config) and nothing else. A user's methods live in the user's own modules:
named in a config's ``imports:``, or in the ``dglkd.methods`` entry-point group of an
installed package, they register with :func:`register_method` like these.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from dglkd.errors import DglkdError
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
from dglkd.methods.context import capture, context_for
from dglkd.methods.recipe import Recipe, compose

ENTRY_POINT_GROUP = "dglkd.methods"
_SUPPORT_MODULES = {"base", "context", "functional", "memory", "recipe"}


def _import_all_methods() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SUPPORT_MODULES:
            importlib.import_module(f"{__name__}.{info.name}")


def _load_entry_points() -> None:
    """Import the modules installed packages declare under ``dglkd.methods``."""
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as exc:  # a broken plugin is named, not a traceback
            raise DglkdError(f"entry point {point.name!r} ({point.value}) of group "
                             f"{ENTRY_POINT_GROUP!r} failed to load: "
                             f"{type(exc).__name__}: {exc}") from None


_import_all_methods()
METHODS.add_loader(_load_entry_points)

__all__ = [
    "METHODS",
    "DistillBatch",
    "DistillMethod",
    "Knowledge",
    "MethodContext",
    "MethodParams",
    "Recipe",
    "build_method",
    "capture",
    "compose",
    "context_for",
    "register_method",
]

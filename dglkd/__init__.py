"""dglkd: knowledge distillation for DGL.

The Python API in a few lines::

    import dglkd
    objective = dglkd.compose(glnn=1.0)            # or compose(ce=1.0, kd={"weight": 1.0})
    terms = objective(student_logits, teacher_logits, labels=labels, label_mask=train_mask)
    loss = sum(terms.values())                     # print(objective): the whole formula
"""
import importlib
import os
from types import ModuleType

# DGL asks for a backend on first import and writes a config file otherwise.
os.environ.setdefault("DGLBACKEND", "pytorch")
# ogb (imported by DGL) asks PyPI for a newer version on import; that hangs or warns offline.
os.environ.setdefault("OUTDATED_IGNORE", "1")

from dglkd.errors import DglkdError  # noqa: E402
from dglkd.methods import (  # noqa: E402
    METHODS,
    DistillMethod,
    Knowledge,
    MethodContext,
    MethodParams,
    Recipe,
    build_method,
    capture,
    compose,
    context_for,
    register_method,
)
from dglkd.models import FeatureTap  # noqa: E402

__version__ = "0.1.0"

# Subpackages reachable as attributes after a bare ``import dglkd`` (``dglkd.data.load``),
# imported on first use: dglkd.data, .graphs and .engine reach code that needs DGL, and
# ``import dglkd`` must work without it (see dglkd.deps).
_SUBPACKAGES = ("cli", "config", "data", "deps", "engine", "graphs", "methods", "models")


def __getattr__(name: str) -> ModuleType:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"dglkd.{name}")
    raise AttributeError(f"module 'dglkd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBPACKAGES})

__all__ = [
    "DglkdError",
    "METHODS",
    "DistillMethod",
    "FeatureTap",
    "Knowledge",
    "MethodContext",
    "MethodParams",
    "Recipe",
    "build_method",
    "capture",
    "compose",
    "context_for",
    "register_method",
    "__version__",
]

"""dglkd: knowledge distillation for DGL.

The Python API in a few lines::

    import dglkd
    method = dglkd.build_method("glnn", num_classes, lam=0.0)
    terms = method(dglkd.Knowledge(student_logits), dglkd.Knowledge(teacher_logits),
                   labels=labels, label_mask=train_mask)
    loss = sum(terms.values())
"""
import os

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
    build_method,
    register_method,
)

__version__ = "0.1.0"

__all__ = [
    "DglkdError",
    "METHODS",
    "DistillMethod",
    "Knowledge",
    "MethodContext",
    "build_method",
    "register_method",
    "__version__",
]

"""DGL, imported in one place.

dglkd is a DGL plugin, but only what holds a ``DGLGraph`` needs DGL: graph datasets, GNN
models and DGL encoders, samplers, DDP over blocks, DistDGL, DeepWalk, Correct and Smooth.
``import dglkd``, the methods API, the image datasets, the CNNs and every image-batch method
run with torch alone, which matters because DGL's wheels stop at old torch versions: a
user on a current torch, or on a GPU machine without DGL's own package index, cannot
install it. Every dglkd module that needs DGL gets it from :func:`dgl`, so a missing or
broken DGL is one line that says what needed it and how to install it, never a traceback.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from dglkd.errors import DglkdError

# What DGL's builds load with (read from DGL's release notes and wheel indexes): the last
# CPU wheel on PyPI is dgl 2.1.0, whose native libraries exist for torch 2.0.0-2.2.1 only;
# newer builds (dgl 2.4, CUDA) are served from DGL's own index, one folder per torch/CUDA.
INSTALL_HINT = (
    "DGL's last PyPI wheel (dgl 2.1.0, CPU) loads with torch 2.0-2.2.1 only: "
    "pip install torch==2.2.1 dgl==2.1.0 torchdata==0.7.1 'numpy<2' 'setuptools<70' "
    "(dglkd's requirements.lock); CUDA builds for newer torch: "
    "pip install dgl -f https://data.dgl.ai/wheels/torch-2.4/cu124/repo.html "
    "(see https://www.dgl.ai/pages/start.html)"
)

# The outcome of the one import attempt: DGL's failed import leaves half-imported
# submodules behind, so a second attempt could fail differently or half-succeed.
_loaded: ModuleType | None = None
_failure: str | None = None


def dgl(what: str) -> ModuleType:
    """The ``dgl`` module; ``what`` (the config key or feature that needs it) is named in
    the one-line :class:`DglkdError` raised when DGL is missing or does not load."""
    global _loaded, _failure
    if _loaded is None and _failure is None:
        try:
            _loaded = importlib.import_module("dgl")
        # DGL that is installed but built for another torch fails in its native libraries
        # (OSError), in its imports (ImportError: setuptools.extern, torchdata.datapipes)
        # or while registering torch operators (RuntimeError and others): whatever the
        # cause, the user's remedy is the same install line.
        except Exception as exc:  # noqa: BLE001
            _failure = _describe(exc)
    if _loaded is None:
        raise DglkdError(f"{what} needs DGL, which {_failure}; {INSTALL_HINT}")
    return _loaded


def optional_dgl() -> ModuleType | None:
    """The ``dgl`` module, or None where it is missing or does not load (for what uses
    DGL when it is there: seeding its generator, recording its version)."""
    try:
        return dgl("optional")
    except DglkdError:
        return None


def _describe(exc: Exception) -> str:
    import torch

    if isinstance(exc, ModuleNotFoundError) and exc.name == "dgl":
        return f"is not installed (torch here: {torch.__version__})"
    first_line = (str(exc).strip().splitlines() or [""])[0][:160]
    return (f"is installed but failed to load with torch {torch.__version__} "
            f"({type(exc).__name__}: {first_line})")


__all__ = ["INSTALL_HINT", "dgl", "optional_dgl"]

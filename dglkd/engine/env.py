"""Seeds and the environment record written beside every run."""
from __future__ import annotations

import platform
import random
import sys
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Iterator

import numpy as np
import torch

from dglkd import deps
from dglkd.config import device_problem
from dglkd.errors import DglkdError


def seed_everything(seed: int) -> None:
    """Seed random, numpy, torch and dgl (where DGL is installed: image runs need none)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    dgl = deps.optional_dgl()
    if dgl is not None:
        dgl.seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator's state as plain Python values and tensors, so a checkpoint loads
    with ``torch.load(weights_only=True)`` (numpy's key array becomes a tensor)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])


def resolve_device(name: str) -> torch.device:
    problem = device_problem(name)
    if problem:
        raise DglkdError(f"device: {name!r}: {problem}")
    return torch.device(name)


@contextmanager
def subnormals_flushed(device: torch.device) -> Iterator[None]:
    """On a CPU, treat subnormal floats as zero while the block runs
    (``torch.set_flush_denormal``), then put the mode back as it was.

    Why: a student that matches a confident teacher drives most class probabilities towards
    zero, so the loss's gradients fill with subnormal numbers (below about 1.2e-38), and a
    CPU's matrix kernels slow down by orders of magnitude on them. On the products-shaped
    graph a GLNN student epoch went from 80 s to 564 s this way; values that small change no
    weight update. GPUs flush them already. The mode is the whole process's, so it is not
    left on: code after a run (hypothesis, for one) relies on IEEE subnormals."""
    if device.type != "cpu":
        yield
        return
    was_flushing = flushing_subnormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_flushing)


def flushing_subnormals() -> bool:
    """Whether this process flushes subnormal floats to zero now (torch has no getter)."""
    return (torch.tensor([1e-30]) * 1e-10).item() == 0.0


def environment(device: torch.device, seeds: list[int]) -> dict[str, Any]:
    """What a run folder records of the machine: versions (DGL's where it loads, the
    others read from the installed packages' metadata, so nothing is imported for them),
    device, seeds, threads."""
    dgl = deps.optional_dgl()  # already loaded to seed its generator, where it loads
    versions = {"python": sys.version.split()[0], "torch": torch.__version__,
                "dgl": dgl.__version__ if dgl is not None else None}
    for name in ("numpy", "ogb", "pydantic", "scikit-learn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "device": str(device), "seeds": seeds,
            "platform": platform.platform(), "threads": torch.get_num_threads()}

"""Teacher outputs as an artifact: cached under a key of (dataset, split, teacher, seed).

An entry holds the trained teacher's weights, its logits over the training graph and its
phase result. On load the key is compared field by field and the logits are recomputed
from the weights and compared, so a stale or foreign file is never used silently.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from dglkd.engine.io import save_torch

CACHE_VERSION = 1


def teacher_key(data: dict[str, Any], teacher: dict[str, Any], train: dict[str, Any],
                seed: int) -> dict[str, Any]:
    return {"version": CACHE_VERSION, "data": data, "teacher": teacher, "train": train,
            "seed": seed}


def digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


class TeacherCache:
    """A folder of ``teacher-<digest>.pt`` files."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: dict[str, Any]) -> Path:
        return self.folder / f"teacher-{digest(key)}.pt"

    def load(self, key: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = torch.load(path)
        except Exception:  # a truncated or foreign file is a miss, not a crash
            return None
        return entry if entry.get("key") == key else None

    def save(self, key: dict[str, Any], state: dict[str, Any], logits: torch.Tensor,
             result: dict[str, Any]) -> Path:
        return save_torch({"key": key, "state": state, "logits": logits.cpu(),
                           "result": result}, self.path(key))


def matches(entry: dict[str, Any], logits: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether recomputed logits agree with the cached ones."""
    cached = entry["logits"]
    return cached.shape == logits.shape and torch.allclose(cached, logits.cpu(), atol=atol)

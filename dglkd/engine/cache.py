"""Teacher outputs as an artifact: cached under a key of (dataset, split, teacher, seed).

An entry holds the trained teacher's weights, its exact logits of a seeded sample of the
training graph's nodes and its phase result. Beside it, ``teacher-<digest>.json`` (written last) records the entry's
size and SHA-256: on load the bytes are checked against it before anything is unpickled,
the key is compared field by field and the logits are recomputed from the weights and
compared, so a stale, foreign or damaged file is never used silently.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from dglkd.engine.io import (file_digest, load_torch_bytes, mismatch,
                             remove_stray_tmp, save_torch, write_json)

# 2: the logits kept to check an entry are exact logits of a seeded sample of nodes
CACHE_VERSION = 2


def teacher_key(data: dict[str, Any], teacher: dict[str, Any], train: dict[str, Any],
                seed: int) -> dict[str, Any]:
    return {"version": CACHE_VERSION, "data": data, "teacher": teacher, "train": train,
            "seed": seed}


def digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class TeacherArtifact:
    """One trained teacher as the cache holds it: its entry (weights, a fingerprint of its
    logits, its phase result) and, for mini-batch graphs, the memory-mapped soft-label
    files of what students read from it, each beside the entry."""

    entry: Path

    def soft_labels(self, names: Sequence[str]) -> Path:
        """The folder of the soft labels holding the logits and the hidden features
        ``names``: the entry's name plus the arrays stored."""
        arrays = "+".join(["logits", *names])
        return self.entry.with_name(f"{self.entry.stem}.soft-{arrays}")


class TeacherCache:
    """A folder of ``teacher-<digest>.pt`` files."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._tidied = False

    def create(self) -> None:
        """Make the folder now, so a path that cannot hold it (a file, /proc, a read-only
        or full disk) fails before anything trains, not when the first teacher is saved."""
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: dict[str, Any]) -> Path:
        return self.folder / f"teacher-{digest(key)}.pt"

    def artifact(self, key: dict[str, Any]) -> TeacherArtifact:
        return TeacherArtifact(self.path(key))

    def record(self, key: dict[str, Any]) -> Path:
        """The entry's size and SHA-256, written after the entry itself."""
        return self.folder / f"teacher-{digest(key)}.json"

    def load(self, key: dict[str, Any],
             say: Callable[[str], None] = lambda _message: None) -> dict[str, Any] | None:
        """The entry of ``key``; None (and, for a damaged one, a line to ``say``) when it
        is absent, damaged or foreign."""
        self._tidy()
        path = self.path(key)
        if not path.exists():
            return None
        data, recorded = path.read_bytes(), self._recorded(key)
        problem = (mismatch(data, recorded) if recorded is not None else
                   f"its record {self.record(key).name} is missing or damaged")
        if problem is None:
            try:
                entry = load_torch_bytes(data)
            except Exception:  # recorded, yet unreadable: written by another torch
                problem = "not readable by this torch"
        if problem is not None:
            say(f"teacher cache: {path}: {problem}; entry discarded, the teacher is "
                "trained again from a fresh initialisation")
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def _recorded(self, key: dict[str, Any]) -> dict[str, Any] | None:
        try:
            recorded = json.loads(self.record(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent (an entry of an older dglkd) or damaged
            return None
        return recorded if isinstance(recorded, dict) else None

    def _tidy(self) -> None:
        """Once per cache object: drop the temp files a killed write left here."""
        if not self._tidied and self.folder.is_dir():
            remove_stray_tmp(self.folder)
        self._tidied = True

    def save(self, key: dict[str, Any], state: dict[str, Any], logits: torch.Tensor,
             result: dict[str, Any]) -> Path:
        path = save_torch({"key": key, "state": state, "logits": logits.cpu(),
                           "result": result}, self.path(key))
        # Written last: an entry killed before its record is a miss, never a half entry.
        write_json(self.record(key), {"file": path.name, **file_digest(path)})
        return path


def matches(entry: dict[str, Any], logits: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether recomputed logits agree with the cached ones."""
    cached = entry["logits"]
    return cached.shape == logits.shape and torch.allclose(cached, logits.cpu(), atol=atol)

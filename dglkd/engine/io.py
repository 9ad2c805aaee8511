"""Files a user keeps: written atomically, never overwriting another run."""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _atomic(path: Path, write) -> Path:
    """Write through a temp file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    return _atomic(Path(path), lambda handle: torch.save(obj, handle))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def new_run_dir(out: str | os.PathLike, name: str) -> Path:
    """A fresh folder ``out/name-YYYYmmdd-HHMMSS[-N]``; never reuses an existing one."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    Path(out).mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        suffix = f"-{attempt}" if attempt else ""
        path = Path(out) / f"{safe}-{stamp}{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {out}")

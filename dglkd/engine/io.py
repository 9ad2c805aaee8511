"""Files a user keeps: written atomically, never overwriting another run, and checked on
every read.

A run folder holds ``manifest.json``: each file written under it (config, checkpoints,
models, phase metrics, results) mapped to its size and SHA-256, recorded at its atomic
write. A reader checks a file against it before loading anything, so a damaged or edited
file is refused with one line instead of being used (``torch.load`` ignores the zip
checksum, and JSON has none).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from dglkd.errors import DglkdError
from dglkd.files import atomic_write

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# Folders whose writes are recorded in their manifest (run folders this process created
# or resumed). Explicit rather than found by walking up, so a stranger's manifest.json in
# a parent folder is never touched.
_TRACKED: set[Path] = set()


def _atomic(path: Path, write: Callable[[Any], Any], record: bool = True) -> Path:
    """Write ``path`` atomically; under a tracked run folder, record the file's size and
    SHA-256 in its manifest."""
    path = Path(path)
    digest = atomic_write(path, write, check=file_digest)
    if record:
        _record(path, digest)
    return path


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    # Serialised in memory first: torch.save straight into a full disk's file fails with
    # "unexpected pos" from its zip writer instead of the OSError that names the cause.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _atomic(Path(path), lambda handle: handle.write(buffer.getbuffer()))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def new_run_dir(out: str | os.PathLike, name: str) -> Path:
    """A fresh folder ``out/name-YYYYmmdd-HHMMSS[-N]``; never reuses an existing one."""
    if not os.fspath(out).strip():
        raise DglkdError("--out: empty folder name; give the folder for run folders, "
                         "e.g. --out runs")
    # A file name holds 255 bytes: the stamp and suffix need 21 of them.
    safe = (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "run")[:200]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    Path(out).mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        suffix = f"-{attempt}" if attempt else ""
        path = Path(out) / f"{safe}-{stamp}{suffix}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        _write_manifest(path, {})
        track(path)
        return path
    raise RuntimeError(f"could not create a new run folder under {out}")


START_FILES = {MANIFEST, "config.yaml", "environment.json"}


def remove_unstarted(run_dir: str | os.PathLike) -> bool:
    """Delete a run folder that holds only what every run starts with (nothing trained,
    nothing to resume); True when it was removed."""
    folder = Path(run_dir)
    if not folder.is_dir() or any(p.name not in START_FILES or p.is_dir()
                                  for p in folder.iterdir()):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    _TRACKED.discard(folder.resolve())
    return True


# -- digests and the manifest -----------------------------------------------------------
def file_digest(path: Path) -> dict[str, Any]:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
            size += len(block)
    return {"size": size, "sha256": sha.hexdigest()}


def mismatch(data: bytes, expected: dict[str, Any] | None) -> str | None:
    """Why ``data`` is not the recorded file, or None when it is."""
    if expected is None:
        return "not recorded in its manifest (written by another program, or damaged)"
    if len(data) != expected.get("size"):
        return f"{len(data)} bytes where {expected.get('size')} were written (damaged)"
    if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        return "its SHA-256 differs from the one recorded at its write (damaged)"
    return None


def track(root: str | os.PathLike) -> None:
    """Record every later atomic write under ``root`` in ``root/manifest.json``."""
    _TRACKED.add(Path(root).resolve())


def _root_of(path: Path) -> Path | None:
    """The deepest tracked folder holding ``path``."""
    resolved = path.resolve()
    roots = [root for root in _TRACKED if resolved.is_relative_to(root)]
    return max(roots, key=lambda root: len(root.parts)) if roots else None


def _record(path: Path, digest: dict[str, Any]) -> None:
    root = _root_of(path)
    if root is None:
        return
    files = read_manifest(root)
    files[path.resolve().relative_to(root).as_posix()] = digest
    _write_manifest(root, files)


def _write_manifest(root: Path, files: dict[str, Any]) -> None:
    _atomic(root / MANIFEST, lambda handle: handle.write(
        (json.dumps({"version": MANIFEST_VERSION, "files": files}, indent=1) + "\n")
        .encode("utf-8")), record=False)


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The recorded files of a run folder; a missing or damaged manifest is an error,
    since nothing in the folder could then be trusted."""
    file = Path(root) / MANIFEST
    if not file.is_file():
        raise DglkdError(f"{file}: missing; the run folder's files cannot be verified "
                         "(not a run folder of this dglkd version); start a new run")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
    except (ValueError, KeyError, TypeError):
        raise DglkdError(f"{file}: damaged (not a dglkd manifest); the run folder's files "
                         "cannot be verified; start a new run") from None
    return files


def verified_bytes(root: str | os.PathLike, path: str | os.PathLike) -> tuple[bytes, str | None]:
    """The bytes of ``path`` and why they do not match the manifest of run folder
    ``root`` (None when they do)."""
    path = Path(path)
    data = path.read_bytes()
    name = path.resolve().relative_to(Path(root).resolve()).as_posix()
    return data, mismatch(data, read_manifest(root).get(name))


def load_torch_bytes(data: bytes) -> Any:
    """A torch file already read (and verified) as bytes."""
    return torch.load(io.BytesIO(data), weights_only=True)


# -- stray temp files ---------------------------------------------------------------------
def remove_stray_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that killed atomic writes left under ``folder``. A temp file
    of a live process (another run sharing a cache folder) is left alone."""
    removed = []
    for tmp in Path(folder).rglob(".*.tmp"):
        if tmp.is_file() and not _writer_alive(tmp):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _writer_alive(tmp: Path) -> bool:
    parts = tmp.name[: -len(".tmp")].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False  # not named by this version: no live writer claims it
    try:
        os.kill(int(parts[1]), 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True

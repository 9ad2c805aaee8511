"""Teacher soft labels at scale: per-node arrays in a folder of memory-mapped files.

An entry is a folder holding one raw ``<name>.bin`` file per array, shape (N, D), and a
``header.json`` with the names, shapes, dtype, byte sizes and SHA-256 of every file.

* Writing: ``SoftLabelWriter`` creates the files in a temporary folder beside the target;
  a producer fills rows batch by batch (``write`` or the ``tensor`` view as an ``out=``
  array). ``commit`` hashes the files, writes the header last and renames the folder into
  place, so a reader sees either a complete entry or none.
* Reading: ``open_soft_labels`` checks the header against the files (sizes, optionally
  hashes) and maps them; ``SoftLabels.rows`` gathers a batch of rows as float32, touching
  only those rows' pages.
* Checking: ``check_sample`` recomputes a seeded sample of rows and compares them with the
  stored ones, a load-time check that costs a few hundred nodes instead of all of them.

A folder without a header is not an entry. A temporary folder left by a killed writer is
removed by the next writer or reader of the same target on the same host.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from dglkd.engine.io import write_json
from dglkd.errors import DglkdError

HEADER = "header.json"
FORMAT = "dglkd-soft-labels"
VERSION = 1
DTYPES = {"float32": np.float32, "float16": np.float16}
VERIFY = ("size", "sha256")
# Rows hashed (and for float16 checked for overflow) per step at commit.
_HASH_BYTES = 1 << 26
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Default tolerances of check_sample: float16 keeps 11 significant bits, so a stored value
# is within 2**-11 of the exact one relative to its size; 1e-3 leaves room for a recompute
# whose last bits differ and so rounds the other way.
_TOLERANCE = {"float32": (1e-4, 1e-5), "float16": (1e-3, 1e-3)}  # (atol, rtol)


# ---------------------------------------------------------------- temporary folders


def _host() -> str:
    """This host's name as it can appear in a folder name."""
    return re.sub(r"[^A-Za-z0-9]+", "_", socket.gethostname()) or "host"


def _partial_name(target: Path, kind: str) -> str:
    """A hidden sibling name that records who made it, so a stale one can be told apart."""
    return f".{target.name}.{kind}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders beside ``target`` left by dead writers on this host.

    A folder whose writer is still running, or that was made on another host (whose
    processes cannot be checked from here), is left alone. Returns the removed paths.
    """
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(partial|old)-{re.escape(_host())}-(\d+)-[0-9a-f]{{8}}$")
    removed = []
    try:
        siblings = list(target.parent.iterdir())
    except FileNotFoundError:
        return removed
    for path in siblings:
        match = pattern.match(path.name)
        if match and not _alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- writing


def _check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise DglkdError(f"soft labels: dtype={dtype!r} unknown; allowed: {', '.join(DTYPES)}")
    return dtype


def _check_shape(name: str, shape: Any) -> tuple[int, int]:
    if not isinstance(name, str) or not _NAME.match(name) or name == Path(HEADER).stem:
        raise DglkdError(f"soft labels: array name {name!r} must be letters, digits, '_', '.' or '-' "
                         f"and not {Path(HEADER).stem!r}")
    try:
        rows, cols = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise DglkdError(f"soft labels: array {name!r} has shape {shape!r}; need (num_nodes, dim)") from None
    if rows < 1 or cols < 1:
        raise DglkdError(f"soft labels: array {name!r} has shape {(rows, cols)}; both sizes must be >= 1")
    return rows, cols


class SoftLabelWriter:
    """Fills the arrays of one entry and commits them atomically.

    ``shapes`` maps each array name to its (num_nodes, dim). Use as a context manager:
    leaving the block normally commits, an exception discards everything written::

        with SoftLabelWriter(folder, {"logits": (n, c)}, dtype="float16") as writer:
            for ids, out in batches:
                writer.write("logits", ids, out)
    """

    def __init__(self, folder: str | os.PathLike, shapes: Mapping[str, Any], dtype: str = "float32",
                 meta: Mapping[str, Any] | None = None) -> None:
        self.target = Path(folder)
        self.dtype = _check_dtype(dtype)
        if not shapes:
            raise DglkdError(f"soft labels {self.target}: no arrays given; pass at least one name and shape")
        self.shapes = {name: _check_shape(name, shape) for name, shape in shapes.items()}
        try:
            self.meta = json.loads(json.dumps(dict(meta or {})))  # a JSON copy, so later edits do not leak in
        except (TypeError, ValueError) as exc:
            raise DglkdError(f"soft labels {self.target}: meta must be JSON-serialisable ({exc})") from None
        self.target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.target)
        self.staging = self.target.parent / _partial_name(self.target, "partial")
        self.staging.mkdir()
        self._maps: dict[str, np.memmap] = {}
        try:
            for name, shape in self.shapes.items():
                self._maps[name] = np.memmap(self.staging / f"{name}.bin", dtype=DTYPES[dtype], mode="w+", shape=shape)
        except BaseException:
            self.abort()
            raise
        self.done = False

    def _array(self, name: str) -> np.memmap:
        if self.done:
            raise DglkdError(f"soft labels {self.target}: writer already committed or aborted")
        if name not in self._maps:
            raise DglkdError(f"soft labels {self.target}: no array {name!r}; allowed: {', '.join(self._maps)}")
        return self._maps[name]

    def tensor(self, name: str) -> Tensor:
        """The whole array as a writable (N, D) tensor in the stored dtype, backed by the
        file: a producer can pass it (or slices of it) as an ``out=`` array. Do not keep
        it past ``commit``: writes after the hash would make the entry fail verification."""
        return torch.from_numpy(self._array(name))

    def write(self, name: str, rows: slice | Tensor | np.ndarray, values: Tensor) -> None:
        """Store ``values`` at ``rows`` (a slice or node ids), cast to the stored dtype per
        batch so a float32 producer can fill a float16 file."""
        target = torch.from_numpy(self._array(name))
        values = values.detach().to(device="cpu", dtype=target.dtype)
        if isinstance(rows, np.ndarray):
            rows = torch.from_numpy(rows)
        if isinstance(rows, Tensor):
            rows = rows.to(device="cpu", dtype=torch.int64)
        try:
            target[rows] = values
        except (RuntimeError, IndexError) as exc:
            raise DglkdError(f"soft labels {self.target}: cannot write rows into {name!r} of shape "
                             f"{tuple(target.shape)}: {exc}".replace("\n", " ")) from None

    def _seal(self, name: str) -> dict[str, Any]:
        """Flush one array to disk and describe it for the header."""
        array = self._maps[name]
        array.flush()
        path = self.staging / f"{name}.bin"
        digest = hashlib.sha256()
        flat = array.reshape(-1)
        step = max(1, _HASH_BYTES // array.itemsize)
        for start in range(0, flat.size, step):
            chunk = flat[start : start + step]
            # float16 tops out at 65504: larger logits would be stored as inf.
            if self.dtype == "float16" and not np.isfinite(chunk).all():
                raise DglkdError(f"soft labels {path}: {name!r} has values that are not finite in float16 "
                                 "(beyond ±65504, or NaN); store it as float32")
            digest.update(chunk)
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
        return {"file": path.name, "shape": list(array.shape), "bytes": int(array.nbytes),
                "sha256": digest.hexdigest()}

    def commit(self) -> Path:
        """Hash and fsync every file, write the header last, then rename the folder into
        place (replacing an older entry). Returns the entry's folder."""
        if self.done:
            raise DglkdError(f"soft labels {self.target}: writer already committed or aborted")
        try:
            arrays = {name: self._seal(name) for name in self._maps}
            header = {"format": FORMAT, "version": VERSION, "dtype": self.dtype, "arrays": arrays,
                      "meta": self.meta}
            write_json(self.staging / HEADER, header)
            _fsync_dir(self.staging)
            self._maps.clear()
            self._swap_in()
        except BaseException:
            self.abort()
            raise
        self.done = True
        return self.target

    def _swap_in(self) -> None:
        """Rename the staging folder to the target; an existing target is moved aside
        first (a folder cannot be renamed over a non-empty one) and removed after."""
        old = None
        if self.target.exists() or self.target.is_symlink():
            old = self.target.parent / _partial_name(self.target, "old")
            os.replace(self.target, old)
        try:
            os.replace(self.staging, self.target)
        except OSError as exc:
            if old is not None and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                # Another writer won the race; its entry stands and ours is dropped.
                shutil.rmtree(old, ignore_errors=True)
                shutil.rmtree(self.staging, ignore_errors=True)
                return
            raise
        _fsync_dir(self.target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Discard everything written; the target is left as it was."""
        self._maps.clear()
        shutil.rmtree(self.staging, ignore_errors=True)
        self.done = True

    def __enter__(self) -> "SoftLabelWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.done:
            self.commit()


def write_soft_labels(folder: str | os.PathLike, arrays: Mapping[str, Tensor], dtype: str = "float32",
                      meta: Mapping[str, Any] | None = None, batch_rows: int = 1 << 16) -> Path:
    """Store in-memory (N, D) tensors as an entry, ``batch_rows`` rows at a time (so a
    float16 entry never needs a whole float16 copy in memory). Returns the folder."""
    shapes = {}
    for name, value in arrays.items():
        if not isinstance(value, Tensor) or value.dim() != 2:
            raise DglkdError(f"soft labels {folder}: array {name!r} must be a 2-D tensor (num_nodes, dim), "
                             f"got {getattr(value, 'shape', type(value).__name__)}")
        shapes[name] = tuple(value.shape)
    with SoftLabelWriter(folder, shapes, dtype=dtype, meta=meta) as writer:
        for name, value in arrays.items():
            for start in range(0, len(value), batch_rows):
                writer.write(name, slice(start, start + batch_rows), value[start : start + batch_rows])
    return Path(folder)


# ---------------------------------------------------------------- reading


class SoftLabels:
    """An opened entry: memory-mapped arrays, read batch by batch."""

    def __init__(self, folder: Path, header: dict[str, Any], maps: dict[str, np.memmap]) -> None:
        self.folder = folder
        self.dtype: str = header["dtype"]
        self.meta: dict[str, Any] = header.get("meta") or {}
        self.header = header
        self._maps = maps

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._maps)

    def shape(self, name: str) -> tuple[int, int]:
        return tuple(self._map(name).shape)  # type: ignore[return-value]

    def _map(self, name: str) -> np.memmap:
        if name not in self._maps:
            raise DglkdError(f"soft labels {self.folder}: no array {name!r}; allowed: {', '.join(self._maps)}")
        return self._maps[name]

    def tensor(self, name: str) -> Tensor:
        """The whole array as a memory-mapped (N, D) tensor in the stored dtype. The map is
        copy-on-write: the file never changes, and a stray in-place op only costs memory."""
        return torch.from_numpy(self._map(name))

    def rows(self, name: str, node_ids: Tensor | np.ndarray | slice) -> Tensor:
        """The rows of ``node_ids`` as a float32 tensor; only those rows are read and
        converted, so a float16 entry costs a batch-sized float32 copy, not a whole one."""
        if isinstance(node_ids, np.ndarray):
            node_ids = torch.from_numpy(node_ids)
        if isinstance(node_ids, Tensor):
            node_ids = node_ids.to(device="cpu", dtype=torch.int64)
        return self.tensor(name)[node_ids].to(torch.float32)

    def __contains__(self, name: object) -> bool:
        return name in self._maps

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}{tuple(m.shape)}" for n, m in self._maps.items())
        return f"SoftLabels({str(self.folder)!r}, {self.dtype}, {shapes})"


def _read_header(path: Path) -> dict[str, Any]:
    """The parsed header, or a one-line error saying what is wrong with it."""
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DglkdError(f"soft labels {path}: header unreadable ({type(exc).__name__})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DglkdError(f"soft labels {path}: not a {FORMAT} header")
    if header.get("version") != VERSION:
        raise DglkdError(f"soft labels {path}: version {header.get('version')!r}; this dglkd reads version {VERSION}")
    if header.get("dtype") not in DTYPES:
        raise DglkdError(f"soft labels {path}: dtype {header.get('dtype')!r}; allowed: {', '.join(DTYPES)}")
    if not isinstance(header.get("arrays"), dict) or not header["arrays"]:
        raise DglkdError(f"soft labels {path}: lists no arrays")
    return header


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _check_file(folder: Path, name: str, entry: Any, dtype: str, verify: str) -> tuple[Path, tuple[int, int]]:
    """The file of one array, after checking it against its header entry."""
    try:
        rows, cols = _check_shape(name, entry["shape"])
        path, size = folder / entry["file"], int(entry["bytes"])
    except (KeyError, TypeError, ValueError, DglkdError):
        raise DglkdError(f"soft labels {folder / HEADER}: entry for {name!r} is malformed") from None
    if path.parent != folder or size != rows * cols * np.dtype(DTYPES[dtype]).itemsize:
        raise DglkdError(f"soft labels {folder / HEADER}: entry for {name!r} is inconsistent "
                         f"(file {entry['file']!r}, {size} bytes for shape {(rows, cols)} {dtype})")
    if not path.is_file():
        raise DglkdError(f"soft labels {path}: missing (the header lists it for {name!r})")
    actual = path.stat().st_size
    if actual != size:
        raise DglkdError(f"soft labels {path}: {actual} bytes, the header says {size} (truncated or overwritten)")
    if verify == "sha256" and _sha256(path) != entry.get("sha256"):
        raise DglkdError(f"soft labels {path}: content does not match the SHA-256 in its header")
    return path, (rows, cols)


def open_soft_labels(folder: str | os.PathLike, verify: str = "size") -> SoftLabels | None:
    """Open an entry written by ``SoftLabelWriter``, or return None when there is none
    (no folder, or a folder without its header, i.e. never committed).

    Every array file must exist with exactly the size its header gives; with
    ``verify="sha256"`` its content must also match the header's hash (about a second or
    two per GB). A damaged entry raises DglkdError naming the file.
    """
    if verify not in VERIFY:
        raise DglkdError(f"soft labels: verify={verify!r} unknown; allowed: {', '.join(VERIFY)}")
    folder = Path(folder)
    clean_stale(folder)
    if not (folder / HEADER).is_file():
        return None
    header = _read_header(folder / HEADER)
    dtype = header["dtype"]
    maps = {}
    for name, entry in header["arrays"].items():
        path, shape = _check_file(folder, name, entry, dtype, verify)
        # Copy-on-write rather than read-only: torch has no read-only tensors, and a write
        # into a read-only map would crash the process instead of raising.
        maps[name] = np.memmap(path, dtype=DTYPES[dtype], mode="c", shape=shape)
    return SoftLabels(folder, header, maps)


# ---------------------------------------------------------------- sample check


def check_sample(store: SoftLabels, recompute: Callable[[Tensor], Tensor], name: str = "logits",
                 count: int = 256, seed: int = 0, atol: float | None = None,
                 rtol: float | None = None) -> bool:
    """Whether ``recompute(node_ids)`` agrees with the stored rows on a seeded sample of
    ``count`` nodes (all of them if fewer). Tolerances default to the stored dtype's:
    float16 rows are compared within float16's rounding."""
    num_nodes = store.shape(name)[0]
    if count < 1:
        raise DglkdError(f"check_sample: count={count}; need at least 1")
    gen = torch.Generator().manual_seed(int(seed))
    # Sorted ids read the file front to back; the sample itself is uniform without repeats.
    ids = torch.randperm(num_nodes, generator=gen)[:count].sort().values
    expected = recompute(ids)
    stored = store.rows(name, ids)
    if not isinstance(expected, Tensor) or tuple(expected.shape) != tuple(stored.shape):
        return False
    default_atol, default_rtol = _TOLERANCE[store.dtype]
    return bool(torch.allclose(stored, expected.detach().to(device="cpu", dtype=torch.float32),
                               atol=default_atol if atol is None else atol,
                               rtol=default_rtol if rtol is None else rtol))

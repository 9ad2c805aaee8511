"""Writing a file so that no reader ever sees half of it: the primitive every layer uses
(the engine adds its manifests on top, :mod:`dglkd.engine.io`)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

Checked = TypeVar("Checked")


def atomic_write(path: Path, write: Callable[[Any], Any],
                 check: Callable[[Path], Checked] | None = None) -> Checked | None:
    """Write through a temp file in ``path``'s folder, then rename it over ``path``: a
    reader sees the old file or the whole new one, and two writers leave one whole file.
    ``check`` reads the written temp file before the rename (what reached the disk, not
    what was meant to); its result is returned. A failed write leaves no temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name tells a later start whether the writer is still alive
    # (dglkd.engine.io.remove_stray_tmp).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        checked = check(Path(tmp)) if check is not None else None
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return checked

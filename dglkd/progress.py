"""Progress bars on a terminal, for every layer (a model's layer-wise inference, the
engine's phases)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(iterable, enabled: bool, desc: str, total: int | None = None, initial: int = 0):
    """A progress bar on a terminal; nothing in logs and pipes (the engine prints a summary
    line per phase instead)."""
    shown = enabled and sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, initial=initial, disable=not shown,
                leave=False, dynamic_ncols=True)

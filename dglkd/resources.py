"""What this machine has: the bound a size estimate is checked against before anything
large is allocated (a model's training state, a generated graph)."""
from __future__ import annotations

import os

from dglkd.errors import DglkdError

GIB = 2**30
# float32 weights, gradients and two Adam moments.
TRAINING_BYTES_PER_PARAMETER = 16


def physical_memory() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(need: int, what: str, advice: str) -> None:
    """A one-line error when ``need`` bytes exceed this machine's memory."""
    have = physical_memory()
    if need > have:
        raise DglkdError(f"{what} needs about {need / GIB:,.0f} GiB, more than this "
                         f"machine's {have / GIB:.0f} GiB; {advice}")


def reset_peak_rss() -> bool:
    """Start measuring this process's peak resident memory anew (Linux: writing 5 to
    ``/proc/self/clear_refs`` resets VmHWM); False where it cannot be reset, and the peak
    is then the process's lifetime peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's peak resident memory since :func:`reset_peak_rss` (or its start)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

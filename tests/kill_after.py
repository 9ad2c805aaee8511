"""Run ``dglkd`` and SIGKILL it the way a crash or Ctrl-\\ would: right after a phase's
epoch is checkpointed, or inside the N-th atomic write of a file named NAME (its temp
file complete, not yet renamed into place):

    python tests/kill_after.py PHASE:EPOCH distill CONFIG --out DIR
    python tests/kill_after.py write:NAME:N distill CONFIG --out DIR
"""
import os
import signal
import sys

from dglkd.cli import main
from dglkd.engine.loop import CHECKPOINT_HOOKS


def kill_at(target: str):
    def hook(phase: str, epoch: int) -> None:
        if f"{phase}:{epoch}" == target:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def kill_in_write(name: str, count: int):
    rename, seen = os.replace, [0]

    def replace(source, target):
        if os.path.basename(target) == name:
            seen[0] += 1
            if seen[0] == count:
                os.kill(os.getpid(), signal.SIGKILL)
        return rename(source, target)

    return replace


if __name__ == "__main__":
    if sys.argv[1].startswith("write:"):
        _, file_name, nth = sys.argv[1].split(":")
        os.replace = kill_in_write(file_name, int(nth))
    else:
        CHECKPOINT_HOOKS.append(kill_at(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))

"""Run ``dglkd`` with a checkpoint hook that SIGKILLs the process right after a given
phase's epoch is checkpointed, the way a crash or Ctrl-\\ would:

    python tests/kill_after.py PHASE:EPOCH distill CONFIG --out DIR
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


if __name__ == "__main__":
    CHECKPOINT_HOOKS.append(kill_at(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))

"""Interleaved median timing shared by the benchmark scripts, and the image training step
they time (the engine's own: :func:`dglkd.engine.step.train_step`).

Arms are timed in alternating rounds (A B, then B A, ...), so a change in background load
hits every arm alike. The scripts report the ratio of the arms' median times and, as a
check, the median over rounds of the per-round ratio (the two arms of a round run back to
back, so slow drifts in load cancel in it).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from dglkd.engine.step import Batch, train_step
from dglkd.methods import MethodContext, Recipe, context_for


def add_common_args(parser: argparse.ArgumentParser, warmup: int, steps: int) -> None:
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed rounds per arm")
    parser.add_argument("--steps", type=int, default=steps, help="timed rounds per arm")


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and a fixed seed; return the ``--device``."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.device(args.device)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for queued GPU work, so a timer sees the kernels finish; a no-op on CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def interleaved_times(
    arms: dict[str, Callable[[], object]], warmup: int, steps: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each arm, one per round, the arms in alternating order each round."""
    sync = synchronizer(device)
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(steps):
        for name in names if round_ % 2 == 0 else reversed(names):
            start = time.perf_counter()
            arms[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio(times: dict[str, list[float]], arm: str, base: str) -> str:
    """``arm / base`` as the ratio of medians, with the median per-round ratio after it."""
    paired = statistics.median(a / b for a, b in zip(times[arm], times[base]))
    return (f"{arm} / {base} = {median(times[arm]) / median(times[base]):.3f} "
            f"(median per-round ratio {paired:.3f})")


def image_context(teacher, student, images, instance_labels=None) -> MethodContext:
    """The engine's MethodContext: feature shapes probed on two of ``images``; with
    ``instance_labels``, one memory-bank row per label (the training images by position)."""
    return context_for(student, teacher, images[:2], labels=instance_labels)


def training_step(teacher, student, objective: Recipe, images, labels,
                  index=None) -> Callable[[], None]:
    """One step of the image engine as a closure (``dglkd.engine.step.train_step`` on an
    image batch): the teacher's forward (eval, no_grad) and the student's, each capturing
    the features the objective reads; the objective's terms; backward; an SGD step (lr
    0.05, momentum 0.9, wd 5e-4) over the student's and the objective's parameters.
    ``teacher=None`` for objectives without one (CE)."""
    optimizer = torch.optim.SGD([*student.parameters(), *objective.parameters()], lr=0.05,
                                momentum=0.9, weight_decay=5e-4)
    if teacher is not None:
        teacher.eval()
    batch = Batch((images,), labels=labels, index=index, teacher_inputs=(images,))
    student.train()
    objective.train()

    def step() -> None:
        train_step(batch, student, objective, optimizer, teacher)

    return step


def header(args: argparse.Namespace, device: torch.device) -> str:
    return (f"device {device}, torch threads {torch.get_num_threads()} (--threads, default 1), "
            f"{args.warmup} warm-up + {args.steps} timed rounds per arm, interleaved, medians")

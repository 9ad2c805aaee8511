"""Interleaved median timing shared by the benchmark scripts, and the image training step
they time.

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

from dglkd.engine.graph import capture
from dglkd.engine.image import frozen_knowledge
from dglkd.methods import MethodContext


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


def image_context(teacher, student, images, num_classes: int, **facts):
    """A MethodContext whose feature shapes are probed on two of ``images``."""
    models = {"student": student, "teacher": teacher}
    return MethodContext(num_classes, probe=lambda side, name: capture(
        models[side], [name], images[:2]).feat(name).shape[1:], **facts)


def training_step(teacher, student, method, images, labels, index=None,
                  taps: tuple[str, ...] = ()) -> Callable[[], None]:
    """One step of the image engine as a closure: the teacher's forward (eval, no_grad) and
    the student's, both tapped for ``taps`` and the method's features; the method's loss;
    backward; an SGD step (lr 0.05, momentum 0.9, wd 5e-4) over the student's and the
    method's parameters. ``teacher=None`` for methods without one (CE)."""
    optimizer = torch.optim.SGD([*student.parameters(), *method.parameters()], lr=0.05,
                                momentum=0.9, weight_decay=5e-4)
    student_names, teacher_names = method.required_features()

    def step() -> None:
        knowledge = (None if teacher is None
                     else frozen_knowledge(teacher, images, [*taps, *teacher_names]))
        own = capture(student, [*taps, *student_names], images)
        loss = sum(method(own, knowledge, labels=labels, index=index).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def header(args: argparse.Namespace, device: torch.device) -> str:
    return (f"device {device}, torch threads {torch.get_num_threads()} (--threads, default 1), "
            f"{args.warmup} warm-up + {args.steps} timed rounds per arm, interleaved, medians")

"""The epoch loop shared by every phase (teacher, baseline, student; graphs and images).

A phase trains one model (and a method's own modules) for a number of epochs, keeps the
weights of the best validation epoch, checkpoints atomically every few epochs and, when a
checkpoint is found, continues from it with the random state it saved, so a killed and
resumed phase ends exactly as an uninterrupted one.
"""
from __future__ import annotations

import copy
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dglkd.engine.env import rng_state, set_rng_state
from dglkd.engine.io import read_json, save_torch, write_json
from dglkd.engine.tracking import PhaseLog, progress

# Tests set this to "PHASE:EPOCH" to kill the process right after that epoch's checkpoint,
# the way a user's crash or Ctrl-\ would.
KILL_ENV = "DGLKD_KILL_AFTER"


@dataclass
class Phase:
    """What one phase trains and how it steps and evaluates."""

    name: str
    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    epochs: int
    checkpoint_every: int
    train_epoch: Callable[[], dict[str, float]]
    evaluate: Callable[[], dict[str, float]]
    generator: torch.Generator | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    # Called once when training ends, with the best weights loaded, and given the phase's
    # TensorBoard folder (None without TensorBoard): e.g. to write projector embeddings.
    on_end: Callable[[Path | None], None] | None = None


@dataclass
class PhaseResult:
    best_epoch: int
    best: dict[str, float]
    last: dict[str, float]
    history: list[dict[str, float]]

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "val_acc": self.best["val_acc"],
                "test_acc": self.best["test_acc"], "test_acc_last": self.last["test_acc"],
                "val_acc_last": self.last["val_acc"]}


def _checkpoint(phase: Phase, epoch: int, best: dict, best_state: dict, history: list) -> dict:
    return {
        "epoch": epoch,
        "modules": {k: m.state_dict() for k, m in phase.modules.items()},
        "optimizer": phase.optimizer.state_dict(),
        "scheduler": phase.scheduler.state_dict() if phase.scheduler else None,
        "rng": rng_state(),
        "generator": phase.generator.get_state() if phase.generator is not None else None,
        "best": best,
        "best_state": best_state,
        "history": history,
    }


def _restore(phase: Phase, state: dict) -> None:
    for key, module in phase.modules.items():
        module.load_state_dict(state["modules"][key])
    phase.optimizer.load_state_dict(state["optimizer"])
    if phase.scheduler is not None:
        phase.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if phase.generator is not None:
        phase.generator.set_state(state["generator"])


def _maybe_kill(name: str, epoch: int) -> None:
    if os.environ.get(KILL_ENV) == f"{name}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


def fit(phase: Phase, run_dir: Path, log_dir: Path | None, show_progress: bool) -> PhaseResult:
    """Run (or finish) a phase; return the best-validation and last-epoch metrics.

    The best weights end in ``run_dir/models/{name}.pt`` and the metrics in
    ``run_dir/phases/{name}.json``; a phase whose JSON exists is not trained again.
    """
    done_file = run_dir / "phases" / f"{phase.name}.json"
    model_file = run_dir / "models" / f"{phase.name}.pt"
    if done_file.exists():
        saved = read_json(done_file)
        for key, module in phase.modules.items():
            module.load_state_dict(torch.load(model_file)[key])
        return PhaseResult(saved["best_epoch"], saved["best"], saved["last"], saved["history"])

    ckpt_file = run_dir / "checkpoints" / f"{phase.name}.pt"
    start, best, best_state, history = 0, {"val_acc": -math.inf}, None, []
    if ckpt_file.exists():
        state = torch.load(ckpt_file)
        _restore(phase, state)
        start, best, best_state, history = (state["epoch"] + 1, state["best"],
                                            state["best_state"], state["history"])

    log = PhaseLog(log_dir, start)
    bar = progress(range(start, phase.epochs), show_progress, phase.name, phase.epochs, start)
    for epoch in bar:
        losses = phase.train_epoch()
        if phase.scheduler is not None:
            phase.scheduler.step()
        metrics = phase.evaluate()
        lr = phase.optimizer.param_groups[0]["lr"]
        history.append({"epoch": epoch, **losses, **metrics})
        log.epoch(epoch, losses, metrics, lr)
        if metrics["val_acc"] > best["val_acc"]:
            best = {"epoch": epoch, **metrics}
            best_state = {k: copy.deepcopy(m.state_dict()) for k, m in phase.modules.items()}
        bar.set_postfix(loss=f"{losses.get('total', 0.0):.3f}", val=f"{metrics['val_acc']:.3f}")
        if (epoch + 1) % phase.checkpoint_every == 0 and epoch + 1 < phase.epochs:
            save_torch(_checkpoint(phase, epoch, best, best_state, history), ckpt_file)
            _maybe_kill(phase.name, epoch)

    last = history[-1]
    save_torch(best_state, model_file)
    for key, module in phase.modules.items():
        module.load_state_dict(best_state[key])
    if phase.on_end is not None:
        phase.on_end(log_dir)
    result = PhaseResult(best["epoch"], best, {k: last[k] for k in metrics}, history)
    log.hparams(phase.hparams, {"best_val_acc": best["val_acc"], "test_acc": best["test_acc"],
                                "test_acc_last": last["test_acc"]})
    log.close()
    write_json(done_file, {"best_epoch": result.best_epoch, "best": result.best,
                           "last": result.last, "history": history})
    ckpt_file.unlink(missing_ok=True)
    return result

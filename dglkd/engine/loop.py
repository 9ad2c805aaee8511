"""The epoch loop shared by every phase (teacher, baseline, student; graphs and images).

A phase trains one model (and a method's own modules) for a number of epochs, keeps the
weights of the best validation epoch, checkpoints atomically every few epochs and, when a
checkpoint is found, continues from it with the random state it saved, so a killed and
resumed phase ends exactly as an uninterrupted one.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dglkd.engine.env import rng_state, set_rng_state
from dglkd.engine.io import load_torch_bytes, save_torch, verified_bytes, write_json
from dglkd.engine.parallel import is_main
from dglkd.engine.tracking import PhaseLog
from dglkd.progress import progress
from dglkd.errors import DglkdError
from dglkd.resources import GIB, peak_rss_bytes, reset_peak_rss

# Called as hook(phase_name, epoch) right after each checkpoint is written: progress
# reporting, or a test that kills the process there the way a crash would.
CHECKPOINT_HOOKS: list[Callable[[str, int], None]] = []


@dataclass
class Phase:
    """What one phase trains and how it steps and evaluates."""

    name: str
    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    epochs: int
    checkpoint_every: int
    train_epoch: Callable[[int], dict[str, float]]  # given the epoch number
    evaluate: Callable[[], dict[str, float]]
    generator: torch.Generator | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    # Called once when training ends, with the best weights loaded, and given the phase's
    # TensorBoard folder (None without TensorBoard): e.g. to write projector embeddings.
    on_end: Callable[[Path | None], None] | None = None
    # Stop after this many epochs without a better validation score (None: never).
    patience: int | None = None


@dataclass
class PhaseResult:
    best_epoch: int
    best: dict[str, float]
    last: dict[str, float]
    history: list[dict[str, float]]
    # What the phase cost in this process: seconds of training and evaluation, and the
    # peak resident memory while it ran (a resumed phase: this run's part).
    wall_s: float = float("nan")
    peak_rss_gb: float = float("nan")

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "val_acc": self.best["val_acc"],
                "test_acc": self.best["test_acc"], "test_acc_last": self.last["test_acc"],
                "val_acc_last": self.last["val_acc"], "epochs_run": len(self.history),
                "wall_s": self.wall_s, "peak_rss_gb": self.peak_rss_gb}


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


def _verified(run_dir: Path, file: Path, phase: Phase, say: Callable[[str], None]
              ) -> bytes | None:
    """The bytes of a file of this phase when its run folder's manifest vouches for them;
    None, with one line, when not (nothing of it is loaded then)."""
    if file.exists():
        data, problem = verified_bytes(run_dir, file)
        if problem is None:
            return data
    else:
        problem = "missing"
    if is_main():
        say(f"{phase.name}: {file}: {problem}; discarded, the phase is trained again "
            "from a fresh initialisation")
    return None


def _finished(phase: Phase, run_dir: Path, say: Callable[[str], None]) -> PhaseResult | None:
    """A phase a previous run finished: its metrics and best weights, both verified."""
    done_file = run_dir / "phases" / f"{phase.name}.json"
    model_file = run_dir / "models" / f"{phase.name}.pt"
    if not done_file.exists():
        return None
    done = _verified(run_dir, done_file, phase, say)
    weights = _verified(run_dir, model_file, phase, say) if done is not None else None
    if done is None or weights is None:
        if is_main():  # so a second resume does not trust it either
            done_file.unlink(missing_ok=True)
        return None
    saved, state = json.loads(done), load_torch_bytes(weights)
    for key, module in phase.modules.items():
        module.load_state_dict(state[key])
    return PhaseResult(saved["best_epoch"], saved["best"], saved["last"], saved["history"],
                       saved.get("wall_s", float("nan")), saved.get("peak_rss_gb", float("nan")))


def _resume_point(phase: Phase, run_dir: Path, ckpt_file: Path,
                  say: Callable[[str], None]) -> tuple[int, dict, dict | None, list]:
    """(first epoch, best metrics, best weights, history): from a verified checkpoint, or
    a fresh start. The modules are untouched until the checkpoint is verified, so a
    discarded one leaves them (and the random state) as the phase's fresh start set them."""
    data = _verified(run_dir, ckpt_file, phase, say) if ckpt_file.exists() else None
    if data is None:
        return 0, {"val_acc": -math.inf}, None, []
    state = load_torch_bytes(data)
    _restore(phase, state)
    return state["epoch"] + 1, state["best"], state["best_state"], state["history"]


def _likely_cause(phase: Phase, term: str, history: list[dict[str, float]]) -> str:
    """The key most likely behind a non-finite loss."""
    lr_key = "teacher_train.lr" if phase.name.startswith("teacher") else "train.lr"
    lr = f"{lr_key}={phase.hparams.get('lr', '?')}"
    if history:  # finite until now: the updates blew the weights up
        return f"{lr} (too large: the weights diverged)"
    label = term.split(".")[0]
    constants = [f"{key}={value}" for key, value in phase.hparams.items()
                 if key.startswith(f"method.{label}.")]
    if constants:
        return f"a constant of {term!r} ({', '.join(constants)}; e.g. a temperature), " \
               f"non-finite input features, or {lr}"
    return f"non-finite input features, or {lr}"


def _out_of_patience(phase: Phase, epoch: int, best: dict) -> bool:
    """Whether ``patience`` epochs have passed since the best validation score (a resumed
    phase knows its best epoch from the checkpoint, so the count carries over)."""
    return phase.patience is not None and "epoch" in best and \
        epoch - best["epoch"] > phase.patience


def _check_finite(phase: Phase, epoch: int, losses: dict[str, float],
                  history: list[dict[str, float]], ckpt_file: Path) -> None:
    """Stop the phase at its first non-finite loss: training on would end "normally" with
    meaningless weights. Nothing of this epoch is saved; the last checkpoint stays."""
    bad = [name for name, value in losses.items() if not math.isfinite(value)]
    if not bad:
        return
    term = next((name for name in bad if name != "total"), bad[0])
    kept = (f"the last checkpoint {ckpt_file} is kept" if ckpt_file.exists()
            else "no checkpoint was written yet")
    raise DglkdError(f"{phase.name}: loss term {term!r} is {losses[term]} at epoch {epoch}; "
                     f"likely cause: {_likely_cause(phase, term, history)}; training "
                     f"stopped, {kept}")


def fit(phase: Phase, run_dir: Path, log_dir: Path | None, show_progress: bool,
        say: Callable[[str], None] = print) -> PhaseResult:
    """Run (or finish) a phase; return the best-validation and last-epoch metrics.

    The best weights end in ``run_dir/models/{name}.pt`` and the metrics in
    ``run_dir/phases/{name}.json``; a phase whose JSON exists is not trained again. Files
    read back (those two, a checkpoint) are verified against the run folder's manifest
    first; a damaged one is discarded with one line to ``say`` and the phase trained
    from its fresh start. With several ranks every rank trains, and only rank 0 writes
    files and TensorBoard.
    """
    writes = is_main()
    done_file = run_dir / "phases" / f"{phase.name}.json"
    model_file = run_dir / "models" / f"{phase.name}.pt"
    finished = _finished(phase, run_dir, say)
    if finished is not None:
        return finished

    ckpt_file = run_dir / "checkpoints" / f"{phase.name}.pt"
    start, best, best_state, history = _resume_point(phase, run_dir, ckpt_file, say)

    log = PhaseLog(log_dir if writes else None, start)
    started = time.monotonic()
    reset_peak_rss()
    bar = progress(range(start, phase.epochs), show_progress, phase.name, phase.epochs, start)
    for epoch in bar:
        if _out_of_patience(phase, epoch, best):
            if writes:
                say(f"{phase.name}: stopped after epoch {epoch - 1}: no better validation "
                    f"score for {phase.patience} epochs (best at epoch {best['epoch']})")
            break
        losses = phase.train_epoch(epoch)
        _check_finite(phase, epoch, losses, history, ckpt_file)
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
        if writes and (epoch + 1) % phase.checkpoint_every == 0 and epoch + 1 < phase.epochs:
            save_torch(_checkpoint(phase, epoch, best, best_state, history), ckpt_file)
            for hook in CHECKPOINT_HOOKS:
                hook(phase.name, epoch)

    last = history[-1]
    if writes:
        save_torch(best_state, model_file)
    for key, module in phase.modules.items():
        module.load_state_dict(best_state[key])
    if phase.on_end is not None and writes:
        phase.on_end(log_dir)
    result = PhaseResult(best["epoch"], best,
                         {k: v for k, v in last.items() if k.endswith("_acc")}, history,
                         time.monotonic() - started, peak_rss_bytes() / GIB)
    log.hparams(phase.hparams, {"best_val_acc": best["val_acc"], "test_acc": best["test_acc"],
                                "test_acc_last": last["test_acc"]})
    log.close()
    if writes:
        write_json(done_file, {"best_epoch": result.best_epoch, "best": result.best,
                               "last": result.last, "history": history,
                               "wall_s": result.wall_s, "peak_rss_gb": result.peak_rss_gb})
        ckpt_file.unlink(missing_ok=True)
    return result

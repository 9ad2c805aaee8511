"""One training step for every kind of batch, and the phase built around it.

A phase iterates :class:`Batch` objects: the whole graph as one batch, sampled blocks,
node batches of an MLP student, image batches. The graph/image difference lives in how
the backends make batches, never here: the step runs the frozen teacher when a batch
carries no precomputed teacher knowledge, captures the student's features, asks the
objective (a :class:`~dglkd.methods.Recipe`) for its weighted terms and takes one
optimizer step. One timer (:func:`median_ms`) serves every measurement.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from dglkd.config import TrainConfig
from dglkd.engine.loop import Phase
from dglkd.engine.optim import make_optimizer, make_scheduler
from dglkd.engine.parallel import all_reduce_mean, broadcast, is_main, world, wrap_ddp
from dglkd.errors import DglkdError
from dglkd.methods import Knowledge, Recipe, capture
from dglkd.methods.adv import Rerun
from dglkd.methods.context import frozen_knowledge

TIMING_REPEATS = 7


@dataclass
class Batch:
    """What one step needs, whatever made it.

    ``inputs`` is what the student is called with (``(graph_or_blocks, feat)``,
    ``(None, feat)`` for a node batch, ``(images,)``); ``index`` the instances' positions
    among the training instances (the rows a memory bank keeps); ``graph`` the relational
    graph among the instances, if any. The teacher's knowledge comes precomputed
    (``teacher``: rows of a cached table) or is computed by running the frozen teacher on
    ``teacher_inputs`` (image batches, whose crops are random).
    """

    inputs: tuple
    labels: Tensor | None = None
    label_mask: Tensor | None = None
    distill_mask: Tensor | None = None
    index: Tensor | None = None
    graph: Any = None
    teacher: Knowledge | None = None
    teacher_inputs: tuple | None = None
    # Sampled blocks: a hidden layer's output has rows for every node of the next block's
    # input; the first ``instances`` of them are the batch's own (DGL puts destination
    # nodes first), the rows the methods see.
    instances: int | None = None


BatchSource = Callable[[], Iterable[Batch]]


def no_instance_graph(batches: str, other_remedy: str = "") -> DglkdError:
    """The one-line error for an objective that reads the graph among a batch's instances
    (``Recipe.reads_graph``) given ``batches`` that carry none."""
    return DglkdError("method: a term reads the graph among a batch's instances (hkd "
                      f"relation: native, lsp graph: native); {batches} carry none; use hkd "
                      f"relation: knn or lsp graph: union_knn{other_remedy}")


class TermMeans:
    """Running per-term means of an epoch's loss terms, kept on the device (no per-step sync)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: dict[str, Tensor]) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach()
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        return {name: (total / self.counts[name]).item() for name, total in self.sums.items()}


def teacher_knowledge(batch: Batch, teacher: nn.Module | None, names: list[str]) -> Knowledge | None:
    """The batch's precomputed teacher knowledge, or the frozen teacher run on it."""
    if batch.teacher is not None or teacher is None or batch.teacher_inputs is None:
        return batch.teacher
    return frozen_knowledge(teacher, names, *batch.teacher_inputs)


def batch_terms(batch: Batch, model: nn.Module, objective: Recipe,
                teacher: nn.Module | None, forward: nn.Module | None = None
                ) -> dict[str, Tensor]:
    """The objective's weighted terms on one batch (the forward half of a step).
    ``forward`` is what the objective is called through (its DDP wrapper, if any)."""
    student_names, teacher_names = objective.required_features()
    knowledge = teacher_knowledge(batch, teacher if objective.needs_teacher else None,
                                  teacher_names)
    student = _instances(batch, capture(model, student_names, *batch.inputs))
    extra = {"rerun": _rerun(batch, model, student_names)} if objective.needs_rerun else {}
    return (forward or objective)(student, knowledge, labels=batch.labels,
                                  label_mask=batch.label_mask, distill_mask=batch.distill_mask,
                                  graph=batch.graph, index=batch.index, **extra)


def _instances(batch: Batch, knowledge: Knowledge) -> Knowledge:
    return knowledge if batch.instances is None else knowledge.rows(slice(0, batch.instances))


def _rerun(batch: Batch, model: nn.Module, names: list[str]) -> Rerun:
    """The batch's input features and the student run again on other features in their
    place (same graph or blocks): for members that perturb the input (NOSMOG)."""
    *context, features = batch.inputs
    return Rerun(features, lambda new: _instances(batch, capture(model, names, *context, new)))


def train_step(batch: Batch, model: nn.Module, objective: Recipe,
               optimizer: torch.optim.Optimizer, teacher: nn.Module | None,
               forward: nn.Module | None = None) -> dict[str, Tensor]:
    """One optimizer step on one batch; returns the total and every weighted term.
    ``model`` may be a DDP wrapper (gradients are then averaged over the ranks)."""
    terms = batch_terms(batch, model, objective, teacher, forward)
    optimizer.zero_grad()
    total = objective.backward(terms, model)
    optimizer.step()
    return {"total": total, **terms}


def train_epoch(batches: Iterable[Batch], model: nn.Module, objective: Recipe,
                optimizer: torch.optim.Optimizer, teacher: nn.Module | None,
                epoch: int = 0, forward: nn.Module | None = None) -> dict[str, float]:
    """One pass over ``batches``; the epoch's mean terms (averaged over the ranks)."""
    model.train()
    objective.train()
    objective.set_epoch(epoch)
    seen = TermMeans()
    for batch in batches:
        seen.add(train_step(batch, model, objective, optimizer, teacher, forward))
    # Each member's weight this epoch (scheduled terms ramp or switch off), logged with
    # the losses.
    weights = {f"weight/{label}": w for label, w in objective.current_weights().items()}
    return {**all_reduce_mean(seen.means()), **weights}


def _distributed(model: nn.Module, objective: Recipe,
                 device: torch.device) -> tuple[nn.Module, nn.Module | None]:
    """The model, and the objective when it has trainable modules, in DDP wrappers when
    there are several ranks. A method's buffers (memory banks) stay each rank's own."""
    if world().world_size == 1:
        return model, None
    forward = None
    if any(p.requires_grad for p in objective.parameters()):
        # A member's modules may sit out a step (HKD's graph term on a small batch).
        forward = wrap_ddp(objective, device, find_unused_parameters=True,
                           broadcast_buffers=False)
    return wrap_ddp(model, device), forward


def _main_evaluates(evaluate: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
    """Rank 0 evaluates (every rank holds the same weights) and tells the others."""
    if world().world_size == 1:
        return evaluate
    return lambda: broadcast(evaluate() if is_main() else None)


def make_phase(name: str, model: nn.Module, objective: Recipe, batches: BatchSource,
               cfg: TrainConfig, evaluate: Callable[[], dict[str, float]], *,
               teacher: nn.Module | None = None, generator: torch.Generator | None = None,
               hparams: dict[str, Any] | None = None,
               on_end: Callable[..., None] | None = None) -> Phase:
    """A phase of ``cfg.epochs`` epochs, each one pass over ``batches()``; with several
    ranks, the model (and the objective's own modules) train under DDP."""
    optimizer = make_optimizer(cfg, [*model.parameters(), *objective.parameters()])
    if teacher is not None:
        teacher.eval()
    device = next(model.parameters()).device
    trained, forward = _distributed(model, objective, device)
    return Phase(name, {"model": model, "method": objective}, optimizer,
                 make_scheduler(cfg, optimizer), cfg.epochs, cfg.checkpoint_every,
                 lambda epoch: train_epoch(batches(), trained, objective, optimizer, teacher,
                                           epoch, forward),
                 _main_evaluates(evaluate), generator=generator, hparams=hparams or {},
                 on_end=on_end, patience=cfg.patience)


def pretrain(objective: Recipe, batches: BatchSource, teacher: nn.Module,
             cfg: TrainConfig) -> None:
    """A method's first stage (MHGD): its own modules trained on the frozen teacher's
    knowledge of the training batches, with an optimizer of ``cfg`` and no schedule."""
    # The method's own first-stage optimiser (MHGD: the authors' SGD) where it has one.
    cfg = cfg.model_copy(update=objective.pretrain_optimizer())
    optimizer = make_optimizer(cfg, objective.parameters())
    teacher_names = objective.required_features()[1]
    objective.train()
    for epoch in range(objective.pretrain_epochs()):
        for batch in batches():
            knowledge = teacher_knowledge(batch, teacher, teacher_names)
            loss = sum(objective.pretrain_terms(knowledge, batch.index).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        # Once an epoch (one device sync): a diverged first stage would hand the student
        # meaningless attention weights without a word.
        if not torch.isfinite(loss.detach()):
            raise DglkdError(f"{objective.name}: first-stage loss is {float(loss)} at epoch "
                             f"{epoch}; likely cause: its learning rate ({cfg.lr:g}; "
                             "method.pretrain_lr) is too large; training stopped")
    objective.end_pretraining()


def median_ms(run: Callable[[], Any], device: torch.device,
              repeats: int = TIMING_REPEATS) -> float:
    """Median wall time of ``run()`` in ms after one warm-up call; waits for the device
    to finish each call, since GPU kernels return before they are done."""
    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


__all__ = ["Batch", "BatchSource", "TermMeans", "batch_terms", "make_phase",
           "median_ms", "no_instance_graph", "pretrain", "train_epoch", "train_step"]

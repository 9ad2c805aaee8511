"""Memory banks and the contrastive machinery that CRD and HKD share.

Both methods embed a feature of each network (Linear + l2-normalise), keep a memory bank
of those embeddings per network (one row per training instance, momentum-updated), and
contrast each student anchor with the teacher (and each teacher anchor with the student)
by InfoNCE against many negatives of other classes.

Negatives come from **one shared pool per batch**: K dataset indices drawn once, their
memory rows gathered once, and every anchor scored against the whole pool with one matrix
product; the pool entries of an anchor's own class (or the anchor itself) are masked out
for that anchor only. The authors of CRD and HKD instead gather K rows *per anchor*
(B × K × D floats per side per step), which is most of their cost; with the shared pool
an anchor sees K minus its same-class entries (about K·(1 − 1/C) for C balanced classes)
instead of exactly K.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dglkd.errors import DglkdError
from dglkd.methods.base import (
    DistillBatch,
    DistillMethod,
    Knowledge,
    MethodContext,
    MethodParams,
)

SIDES = ("student", "teacher")


def other_side(side: str) -> str:
    return "teacher" if side == "student" else "student"


def side_knowledge(batch: DistillBatch, side: str) -> Knowledge:
    return batch.student if side == "student" else batch.teacher


class MemoryBank(nn.Module):
    """One table of l2-normalised embeddings per network, a row per training instance.

    Tian et al., "Contrastive Representation Distillation", ICLR 2020 (``ContrastMemory``).
    A row moves towards each new embedding of its instance by
    ``normalise(m·row + (1 − m)·new)``. Rows start as random unit vectors, the scale of
    every later row. ``labels`` (−1 where unknown) lets negatives skip the anchor's class.
    """

    def __init__(
        self, num_instances: int, dim: int, momentum: float, labels: Tensor | None = None
    ) -> None:
        super().__init__()
        self.momentum = momentum
        for side in SIDES:
            self.register_buffer(side, F.normalize(torch.randn(num_instances, dim), dim=1))
        known = torch.full((num_instances,), -1, dtype=torch.long)
        if labels is not None:
            if len(labels) != num_instances:
                raise DglkdError(
                    f"instance_labels: {len(labels)} labels for {num_instances} instances"
                )
            known = labels.detach().long().cpu().clone()
        # Derived from the data each run, so not part of a checkpoint.
        self.register_buffer("labels", known, persistent=False)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def rows(self, side: str, index: Tensor) -> Tensor:
        """Copies of the rows of ``index`` (safe to use after the bank is updated)."""
        return getattr(self, side).index_select(0, index)

    def sample(self, size: int) -> Tensor:
        """``size`` distinct indices, uniformly; the whole bank when it is no bigger."""
        n, device = len(self), self.labels.device
        if size >= n:
            return torch.arange(n, device=device)
        return torch.randperm(n, device=device)[:size]

    def check(self, index: Tensor) -> None:
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise DglkdError(
                f"index: positions among the training instances must lie in [0, {len(self)}) "
                f"(context.num_instances), got {int(index.min())}..{int(index.max())}"
            )

    @torch.no_grad()
    def record_labels(self, index: Tensor, labels: Tensor) -> None:
        """Learn the labels a batch reveals (for banks built without ``instance_labels``)."""
        known = labels >= 0
        self.labels[index[known]] = labels[known]

    @torch.no_grad()
    def update(self, index: Tensor, embeddings: dict[str, Tensor]) -> None:
        for side, new in embeddings.items():
            table = getattr(self, side)
            old = table.index_select(0, index)
            mixed = self.momentum * old + (1.0 - self.momentum) * new.detach().to(table.dtype)
            table.index_copy_(0, index, F.normalize(mixed, dim=1))


def masked_info_nce(
    anchor: Tensor, positive: Tensor, pool: Tensor, skip: Tensor, temperature: float
) -> Tensor:
    """InfoNCE of (B, D) anchors against their positives and one shared (K, D) pool.

    ``skip`` (B, K) is added to the anchor-pool scores: 0 for a negative, a huge negative
    number for an entry that is not one of this anchor's negatives (see
    :func:`skip_bias`); an anchor left with no negatives contributes zero. Written as
    ``logaddexp(pos, logsumexp(neg)) − pos`` with the mask fused into one ``addmm``, so
    the (B, K) scores are written once and never concatenated or copied.
    """
    scaled = anchor / temperature  # scale B×D numbers rather than B×K
    pos = (scaled * positive.to(anchor.dtype)).sum(dim=-1)
    neg = torch.addmm(skip.to(anchor.dtype), scaled, pool.to(anchor.dtype).t())
    return (torch.logaddexp(pos, torch.logsumexp(neg, dim=1)) - pos).mean()


def exclusion_mask(
    anchor_ids: Tensor, anchor_labels: Tensor, pool_ids: Tensor, pool_labels: Tensor
) -> Tensor:
    """(B, K) True where a pool entry is the anchor itself or of the anchor's known class."""
    same_instance = anchor_ids[:, None] == pool_ids[None, :]
    same_class = (anchor_labels[:, None] == pool_labels[None, :]) & (anchor_labels[:, None] >= 0)
    return same_instance | same_class


def skip_bias(exclude: Tensor, dtype: torch.dtype) -> Tensor:
    """0 where ``exclude`` is False, else a number whose exp is 0 even after adding scores.

    Finite rather than −inf: a row of only −inf would give NaN gradients.
    """
    skip = torch.finfo(dtype).min / 2
    return torch.zeros(exclude.shape, dtype=dtype, device=exclude.device).masked_fill_(
        exclude, skip
    )


@dataclass
class ContrastTargets:
    """What the anchors of one batch are contrasted against, by the side they come from.

    ``positives[side]`` (n, D) holds, for each anchor row, the stop-gradient embedding of
    the same instance on that side (a memory row, or the current embedding in batch mode);
    ``pool[side]`` (K, D) the shared negatives; ``skip`` (n, K) the bias that removes an
    anchor's own instance and class from its negatives (:func:`skip_bias`).
    """

    positives: dict[str, Tensor]
    pool: dict[str, Tensor]
    skip: Tensor
    temperature: float
    negatives_from: str

    def loss(
        self, anchors: dict[str, Tensor], current: dict[str, Tensor] | None = None,
        mix: float = 1.0,
    ) -> Tensor:
        """Student → teacher plus teacher → student InfoNCE.

        The positive of an anchor is ``normalise(mix·positives + (1 − mix)·current)`` of
        the other side, detached (HKD's graph term mixes memory with the current ``h``).
        """
        total = anchors["student"].sum() * 0.0  # also the loss of an empty batch
        if len(self.skip) == 0:
            return total
        for side in SIDES:
            source = other_side(side)
            positive = self._positive(source, current, mix)
            pool = self.pool[source if self.negatives_from == "other" else side]
            total = total + masked_info_nce(
                anchors[side], positive, pool, self.skip, self.temperature
            )
        return total

    def _positive(self, side: str, current: dict[str, Tensor] | None, mix: float) -> Tensor:
        base = self.positives[side]
        if current is None or mix == 1.0:
            return base
        return F.normalize(mix * base + (1.0 - mix) * current[side].detach(), dim=1)


@dataclass
class ContrastView:
    """The rows of a batch that enter the contrastive terms (those whose teacher knowledge
    may be used): embeddings ``z`` per side, dataset ``index``, known ``labels`` (−1 else)."""

    z: dict[str, Tensor]
    index: Tensor | None
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)


class ContrastiveParams(MethodParams):
    """Constants shared by CRD and HKD (each sets its own defaults)."""

    student_feature: str = pydantic.Field(
        "hidden", description="student feature embedded for the contrast (module path or "
                              "alias; hidden: the penultimate feature, a GNN's or MLP's last "
                              "hidden layer, a CNN's pooled feature)")
    teacher_feature: str = pydantic.Field("hidden",
                                          description="the teacher's feature, likewise")
    embed_dim: int = pydantic.Field(128, ge=1, le=65536,
                                    description="width of the l2-normalised embeddings")
    nce_temperature: float = pydantic.Field(0.07, ge=1e-3, le=100,
                                          description="InfoNCE temperature")
    negatives: Literal["memory", "batch"] = pydantic.Field(
        "memory", description="negatives from a memory bank of every training instance, or "
                              "from the batch's other-class rows (small data)")
    negatives_from: Literal["other", "own"] = pydantic.Field(
        "other", description="read an anchor's negatives from the other network's memory "
                             "(CRD) or its own (the HKD authors' code)")
    num_negatives: int = pydantic.Field(16384, ge=1, le=1 << 20,
                                        description="size of the shared pool of negatives "
                                                    "per batch")
    momentum: float = pydantic.Field(0.5, ge=0.0, le=1.0,
                                     description="memory-bank momentum")


class ContrastiveDistill(DistillMethod):
    """Base of CRD and HKD: embeddings, memory bank and negatives.

    Subclasses add their contrastive term(s) in ``loss_terms`` with :meth:`view`,
    :meth:`targets` and :meth:`remember`.
    """

    Params = ContrastiveParams

    def __init__(self, params: ContrastiveParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self.embed = nn.ModuleDict(
            {side: nn.Linear(context.dim(side, self._feature(side)), params.embed_dim)
             for side in SIDES}
        )
        self.bank = self._build_bank(params, context) if params.negatives == "memory" else None

    def _build_bank(self, params: ContrastiveParams, context: MethodContext) -> MemoryBank:
        if context.num_instances < 1:
            raise DglkdError(
                f"method {self.name!r}: negatives='memory' keeps a row per training "
                "instance, but this run gives no instance count (MethodContext.num_instances: "
                "context_for sets it from labels=; DistDGL runs give none); use "
                "negatives='batch'"
            )
        return MemoryBank(context.num_instances, params.embed_dim, params.momentum,
                          context.instance_labels)

    def _feature(self, side: str) -> str:
        return self.params.student_feature if side == "student" else self.params.teacher_feature

    def required_features(self) -> tuple[list[str], list[str]]:
        return [self.params.student_feature], [self.params.teacher_feature]

    # -- the pieces a contrastive term is made of --------------------------------------
    def view(self, batch: DistillBatch) -> ContrastView:
        z = {}
        for side in SIDES:
            feature = side_knowledge(batch, side).feat(self._feature(side))
            feature = batch.distill_rows(feature)
            z[side] = F.normalize(self.embed[side](feature.reshape(len(feature), -1)), dim=1)
        index = None if batch.index is None else batch.distill_rows(batch.index).long()
        return ContrastView(z, index, batch.distill_rows(self._batch_labels(batch)))

    def targets(self, view: ContrastView) -> ContrastTargets:
        """Positives, the shared pool of negatives and its per-anchor mask for this batch,
        from the memory bank or (``negatives="batch"``) from the batch itself."""
        if self.bank is None:
            return self._batch_targets(view)
        return self._memory_targets(view)

    def remember(self, view: ContrastView) -> None:
        """Move the memory rows of this batch towards its embeddings (training only)."""
        if self.bank is not None and self.training and len(view):
            self.bank.update(view.index, view.z)

    # -- helpers -----------------------------------------------------------------------
    def _batch_labels(self, batch: DistillBatch) -> Tensor:
        """The batch's labels where they may be used, −1 elsewhere."""
        n, device = len(batch.student.logits), batch.student.logits.device
        if batch.labels is None:
            return torch.full((n,), -1, dtype=torch.long, device=device)
        labels = batch.labels.long()
        if batch.label_mask is None:
            return labels
        known = torch.zeros(n, dtype=torch.bool, device=device)
        known[batch.label_mask] = True
        return torch.where(known, labels, torch.full_like(labels, -1))

    def _batch_targets(self, view: ContrastView) -> ContrastTargets:
        # The batch stands in for the bank: current embeddings, detached, are both the
        # positives and the pool, and an anchor's own row is its positive, not a negative.
        current = {side: z.detach() for side, z in view.z.items()}
        rows = torch.arange(len(view), device=view.labels.device)
        return self._contrast(view, current, current,
                              exclusion_mask(rows, view.labels, rows, view.labels))

    def _memory_targets(self, view: ContrastView) -> ContrastTargets:
        if view.index is None:
            raise DglkdError(
                f"method {self.name!r}: negatives='memory' needs the instances' positions "
                "(index=...); give them or use negatives='batch'"
            )
        bank = self.bank
        bank.check(view.index)
        if self.training:
            bank.record_labels(view.index, view.labels)
        pool_ids = bank.sample(self.params.num_negatives)
        exclude = exclusion_mask(view.index, bank.labels[view.index], pool_ids,
                                 bank.labels[pool_ids])
        positives = {side: bank.rows(side, view.index) for side in SIDES}
        pool = {side: bank.rows(side, pool_ids) for side in SIDES}
        return self._contrast(view, positives, pool, exclude)

    def _contrast(self, view: ContrastView, positives: dict[str, Tensor],
                  pool: dict[str, Tensor], exclude: Tensor) -> ContrastTargets:
        skip = skip_bias(exclude, view.z["student"].dtype)
        return ContrastTargets(positives, pool, skip, self.params.nce_temperature,
                               self.params.negatives_from)

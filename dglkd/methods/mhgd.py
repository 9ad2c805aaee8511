"""Multi-head graph distillation (MHGD): relations among the images of a batch, as graphs
built by attention between the singular vectors of consecutive stages."""
from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence

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
    register_method,
)


class MHGDParams(MethodParams):
    """Stage features by name in order (a CNN's ``stage_names``); ``teacher_stages`` when the
    teacher's names differ (one per student stage)."""

    stages: list[str] = pydantic.Field(["stage1", "stage2", "stage3"], min_length=2,
                                       description="the student's stage features, in order")
    teacher_stages: list[str] | None = pydantic.Field(
        None, description="the teacher's stage features when their names differ")
    heads: int = pydantic.Field(8, ge=1, le=64, description="attention heads per stage pair")
    student_candidates: int = pydantic.Field(
        4, ge=1, description="student singular vectors the best-aligned one is chosen from")
    pretrain_epochs: int = pydantic.Field(40, ge=0, le=100_000,
                                          description="epochs of the first stage "
                                                      "(attention on the teacher)")
    drop_heads: bool = pydantic.Field(True, description="random head drop in the first stage")
    reduction: Literal["sum", "mean"] = pydantic.Field(
        "sum", description="graph KL summed over the batch's rows (the authors') or "
                           "divided by the batch size")
    clip: Literal["per_variable", "feature_map", "none"] = pydantic.Field(
        "per_variable",
        description="per_variable (the authors'): the term's gradient of each student "
                    "parameter clipped to ‖rest of the loss's gradient‖·sigmoid(epoch − "
                    "clip_ramp_start); feature_map: clipped at each stage map to the "
                    "rest's norm there; none")
    clip_ramp_start: int = pydantic.Field(
        0, ge=0, le=100_000, description="epoch of the clip ramp's midpoint (the authors' "
                                         "init_epoch: the first distillation epoch)")
    pretrain_optimizer: Literal["sgd", "adam", "adamw", "same"] = pydantic.Field(
        "sgd", description="optimizer of the first stage (the authors': SGD); same: the "
                           "student's train optimizer")
    pretrain_lr: float = pydantic.Field(0.1, gt=0, le=10.0,
                                        description="first-stage learning rate (authors: 0.1)")
    pretrain_momentum: float = pydantic.Field(0.9, ge=0, lt=1,
                                              description="first-stage SGD momentum")
    pretrain_weight_decay: float = pydantic.Field(
        5e-4, ge=0, le=1.0, description="first-stage L2 on the attention weights")
    svd_eps: float = pydantic.Field(1e-3, gt=0, le=1.0,
                                    description="eigenvalue gap guard of the SVD")


# -- a singular value decomposition whose gradient stays finite --------------------------
class SafeEigh(torch.autograd.Function):
    """``torch.linalg.eigh`` whose backward stays finite when eigenvalues repeat.

    The eigenvector gradient divides by the gaps λ_j − λ_i; here 1/gap becomes the safe
    reciprocal gap / (gap² + δ²) with δ = ``eps`` · max|λ| per matrix: close to 1/gap for
    well-separated eigenvalues, 0 at a tie (where the true gradient is undefined; the
    authors' TF code zeroes the infinite entries the same way) and at most 1/(2δ) in
    between, so near-ties left by float32 rounding cannot blow the gradient up.
    """

    @staticmethod
    def forward(ctx: Any, matrix: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        values, vectors = torch.linalg.eigh(matrix)
        ctx.save_for_backward(values, vectors)
        ctx.eps = eps
        return values, vectors

    @staticmethod
    def backward(ctx: Any, grad_values: Tensor, grad_vectors: Tensor) -> tuple[Tensor, None]:
        values, vectors = ctx.saved_tensors
        gap = values.unsqueeze(-2) - values.unsqueeze(-1)  # gap[i, j] = λ_j − λ_i
        delta = ctx.eps * values.abs().amax(-1, keepdim=True).unsqueeze(-1)
        # floored where δ² stays representable, so an all-zero matrix gives 0/δ², not 0/0
        delta = delta.clamp_min(torch.finfo(values.dtype).tiny ** 0.5)
        inner = (vectors.transpose(-1, -2) @ grad_vectors) * (gap / (gap.pow(2) + delta.pow(2)))
        inner = inner + torch.diag_embed(grad_values)
        grad = vectors @ inner @ vectors.transpose(-1, -2)
        return (grad + grad.transpose(-1, -2)) / 2, None


def top_right_singular_vectors(x: Tensor, count: int, eps: float = 1e-3) -> Tensor:
    """The ``count`` leading right singular vectors (unit columns) of each matrix of ``x``
    (B, M, C) → (B, C, count), computed as eigenvectors of the smaller Gram matrix (in
    float64) with a gradient that stays finite when singular values repeat."""
    rows, cols = x.shape[-2:]
    count = min(count, rows, cols)
    x64 = x.double()
    if rows >= cols:
        _, vectors = SafeEigh.apply(x64.transpose(1, 2) @ x64, eps)
        right = vectors.flip(-1)[..., :count]
    else:
        # V = Xᵀ U / σ from the left singular vectors of the M × M Gram matrix
        _, vectors = SafeEigh.apply(x64 @ x64.transpose(1, 2), eps)
        right = F.normalize(x64.transpose(1, 2) @ vectors.flip(-1)[..., :count], dim=1)
    return right.to(x.dtype)


def as_matrices(feature: Tensor) -> Tensor:
    """One matrix per instance: a feature map (B, C, H, W) as (B, HW, C), so its right
    singular vectors live in channel space; any other feature as a (B, 1, D) row."""
    if feature.dim() == 4:
        return feature.flatten(2).transpose(1, 2)
    return feature.flatten(1).unsqueeze(1)


def _nonzero_sign(x: Tensor) -> Tensor:
    return torch.where(x < 0, -1.0, 1.0).to(x.dtype)


def teacher_vector(feature: Tensor, eps: float) -> Tensor:
    """The teacher's top right singular vector per instance (B, C), its sign fixed so that
    its entries sum to ≥ 0 (the authors leave the solver's arbitrary sign)."""
    vector = top_right_singular_vectors(as_matrices(feature), 1, eps).squeeze(-1)
    return vector * _nonzero_sign(vector.sum(1, keepdim=True))


def aligned_student_vector(feature: Tensor, teacher: Tensor, candidates: int, eps: float) -> Tensor:
    """Of the student's ``candidates`` leading right singular vectors, the one with the
    largest |cosine| to the teacher's vector, its sign flipped to agree with it (the
    authors' ``Align_rsv``)."""
    vectors = top_right_singular_vectors(as_matrices(feature), candidates, eps)
    cosine = (vectors * teacher.unsqueeze(-1)).sum(1).detach()
    best = cosine.abs().argmax(1, keepdim=True)
    chosen = vectors.gather(2, best.unsqueeze(1).expand(-1, vectors.shape[1], 1)).squeeze(-1)
    return chosen * _nonzero_sign(cosine.gather(1, best))


# -- the authors' gradient clipping, at the student's feature maps ------------------------
class _RecordGradient(torch.autograd.Function):
    """Identity whose backward records the gradient passing through it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, record: list[Tensor]) -> Tensor:
        ctx.record = record
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        ctx.record.append(grad)
        return grad, None


def clipped_branch(feature: Tensor) -> Tensor:
    """``feature`` for a distillation branch whose gradient at ``feature`` is clipped to the
    norm of the gradient the rest of the loss sends there.

    The authors clip MHGD's gradient, per student variable, to the norm of the CE gradient
    (without it, the graph term's gradient through the SVD dwarfs the task's); a loss cannot
    see the student's variables, so the clip happens at the feature maps, in the same single
    backward pass: the branch records its own gradient, and a hook on ``feature`` (run once
    every gradient there is summed) rescales that part.
    """
    if not feature.requires_grad:
        return feature
    record: list[Tensor] = []

    def clip(total: Tensor) -> Tensor:
        if not record:
            return total
        own = record.pop()
        rest = total - own
        limit = rest.norm()
        scale = (limit / own.norm().clamp_min(torch.finfo(own.dtype).tiny)).clamp(max=1.0)
        # with nothing else to follow (no CE, no KD) the branch is left unclipped
        return rest + own * torch.where(limit > 0, scale, torch.ones_like(scale))

    feature.register_hook(clip)
    return _RecordGradient.apply(feature, record)


# -- the multi-head attention between two stages ------------------------------------------
def _linear_bn(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim))


class StagePairAttention(nn.Module):
    """Lee & Song's multi-head attention between consecutive stages: per head a B × B graph
    whose row i weighs the earlier-stage vectors of instances j for the later-stage vector
    of instance i (key·query, each side Linear + BatchNorm, head width the mean of the two
    stage widths), and an estimator that predicts the later vector from the weighted
    earlier ones (first stage only)."""

    def __init__(self, early_dim: int, late_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        width = (early_dim + late_dim) // 2
        self.query = _linear_bn(late_dim, width * heads)
        self.key = _linear_bn(early_dim, width * heads)
        self.value = nn.Sequential(_linear_bn(early_dim, width), nn.ReLU())
        self.out = nn.Linear(width * heads, late_dim)

    def graph(self, early: Tensor, late: Tensor) -> Tensor:
        """Attention logits (heads, B, B)."""
        query = self.query(late).view(len(late), self.heads, -1)
        key = self.key(early).view(len(early), self.heads, -1)
        return torch.einsum("ihd,jhd->hij", query, key)

    def predict(self, early: Tensor, late: Tensor, drop_heads: bool) -> Tensor:
        """Unit-length estimate of every later-stage vector (B, late_dim)."""
        weights = self.graph(early, late).softmax(-1)
        if drop_heads:
            weights = weights * _head_mask(weights)
        mixed = weights @ self.value(early)  # (heads, B, width)
        return F.normalize(self.out(mixed.transpose(0, 1).flatten(1)), dim=1)


def _head_mask(weights: Tensor) -> Tensor:
    """Per instance, keep the heads whose Gaussian draw is above the heads' mean (about
    half of them), as the authors' ``drop_head``."""
    noise = torch.randn(weights.shape[0], weights.shape[1], 1, device=weights.device)
    return (noise > noise.mean(0, keepdim=True)).to(weights.dtype)


def graph_kl(student_logits: Tensor, teacher_logits: Tensor, reduction: str) -> Tensor:
    """KL(student graph ‖ teacher graph) over the rows of every head, on softmax(tanh(·));
    summed over heads and rows, divided by B for ``mean``."""
    log_p_student = torch.tanh(student_logits).log_softmax(-1)
    log_p_teacher = torch.tanh(teacher_logits).log_softmax(-1)
    kl = (log_p_student.exp() * (log_p_student - log_p_teacher)).sum()
    return kl / student_logits.shape[1] if reduction == "mean" else kl


@register_method("mhgd")
class MHGD(DistillMethod):
    """Lee & Song, "Graph-based Knowledge Distillation by Multi-head Attention Network",
    BMVC 2019.

    Each stage's feature map is compressed, per instance, to a right singular vector (the
    teacher's top one; of the student's top ``student_candidates``, the one best aligned
    with the teacher's, sign-fixed). For each pair of consecutive stages a ``heads``-head
    attention module builds B × B graphs over the batch. First stage
    (``pretrain_epochs``): the modules learn, on the teacher alone, to predict each
    later-stage vector from the attention-weighted earlier ones (cosine loss, random head
    drop). Then they are frozen (BatchNorm on its running statistics) and
    ``mhgd = Σ_pairs KL(G_s ‖ G_t)`` over heads and rows of softmax(tanh(graph logits));
    the recipe is ``ce + mhgd``. The KL is summed over the batch's rows, as the authors do
    (``reduction: sum``; ``mean`` divides by the batch size).

    Gradient clip (``clip``). The authors clip, per student variable v, MHGD's gradient to
    ‖g_CE(v)‖·sigmoid(epoch − init_epoch): ``per_variable`` (the default) does exactly
    that through :meth:`Recipe.backward <dglkd.methods.recipe.Recipe.backward>`, which
    hands :meth:`clip_gradient` the term's gradient and that of every other term of the
    recipe (CE, and KD when present) per parameter; ``clip_ramp_start`` is init_epoch,
    counted in distillation epochs (our first-stage epochs are not counted, so 0 puts
    the ramp's midpoint on the first distillation epoch, as the authors' global count
    does after their first stage). Without a recipe around it (the method called and
    back-propagated alone) nothing is clipped. ``feature_map`` clips instead at each
    student stage map, in a single backward pass, to the norm of the rest's gradient
    there (see ``clipped_branch``); ``none`` leaves the gradient alone.

    First stage optimiser: the authors train the attention modules for 40 epochs with
    SGD (lr 0.1) and L2 on their weights; :meth:`pretrain_optimizer` tells the engine
    (``pretrain_optimizer``, ``pretrain_lr``, ``pretrain_momentum``,
    ``pretrain_weight_decay``; ``same`` keeps the student's optimizer).

    The student's vectors must live in the teacher's channel space: where a student stage
    has another channel count, a learned 1×1 convolution (Linear for vectors), trained
    with the student, maps it to the teacher's, as the authors' codebase maps mismatched
    features for its other multi-layer methods (its MHGD assumes equal widths).
    """

    Params = MHGDParams
    paper_recipe = {"ce": 1.0, "mhgd": 1.0}

    def __init__(self, params: MHGDParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self.teacher_stages = params.teacher_stages or params.stages
        if len(self.teacher_stages) != len(params.stages):
            raise DglkdError(
                f"method.teacher_stages: {len(self.teacher_stages)} names for "
                f"{len(params.stages)} student stages; give one teacher stage per student stage"
            )
        dims = [_channels(context.shape("teacher", name)) for name in self.teacher_stages]
        self.attention = nn.ModuleList(
            StagePairAttention(early, late, params.heads) for early, late in zip(dims, dims[1:])
        )
        self.student_maps = nn.ModuleList(
            _channel_map(context.shape("student", name), dim)
            for name, dim in zip(params.stages, dims)
        )
        # persisted, so a run resumed after the first stage keeps its modules frozen
        self.register_buffer("frozen", torch.tensor(False))

    def required_features(self) -> tuple[list[str], list[str]]:
        return list(self.params.stages), list(self.teacher_stages)

    # -- first stage: the attention modules learn on the teacher alone --------------------
    def pretrain_epochs(self) -> int:
        return self.params.pretrain_epochs

    def pretrain_terms(self, teacher: Knowledge, index: Tensor | None = None) -> dict[str, Tensor]:
        with torch.no_grad():
            vectors = self._teacher_vectors(teacher, lambda x: x)
        drop = self.training and self.params.drop_heads
        losses = [
            (1 - (module.predict(early, late, drop) * late).sum(1)).mean()
            for module, early, late in zip(self.attention, vectors, vectors[1:])
        ]
        return {"mha": torch.stack(losses).sum()}

    def end_pretraining(self) -> None:
        self.frozen.fill_(True)
        self._apply_freeze()

    def train(self, mode: bool = True) -> "MHGD":
        super().train(mode)
        if bool(self.frozen):
            self.attention.eval()
        return self

    # -- second stage: distil the frozen graphs ------------------------------------------
    def loss_terms(self, batch: DistillBatch) -> dict[str, Tensor]:
        return {"mhgd": self._graph_term(batch)}

    def _graph_term(self, batch: DistillBatch) -> Tensor:
        if not bool(self.frozen):
            # distilling through trainable graphs would let them collapse onto each other
            self.end_pretraining()
        self._apply_freeze()
        with torch.no_grad():
            teacher = self._teacher_vectors(batch.teacher, batch.distill_rows)
        student = [
            aligned_student_vector(
                project(batch.distill_rows(self._student_feature(batch, name))),
                target, self.params.student_candidates, self.params.svd_eps,
            )
            for name, project, target in zip(self.params.stages, self.student_maps, teacher)
        ]
        losses = []
        for i, module in enumerate(self.attention):
            with torch.no_grad():
                teacher_graph = module.graph(teacher[i], teacher[i + 1])
            student_graph = module.graph(student[i], student[i + 1])
            losses.append(graph_kl(student_graph, teacher_graph, self.params.reduction))
        return torch.stack(losses).sum()

    def _student_feature(self, batch: DistillBatch, name: str) -> Tensor:
        feature = batch.student.feat(name)
        return clipped_branch(feature) if self.params.clip == "feature_map" else feature

    # -- the authors' clip, per student variable (applied by Recipe.backward) -----------
    def has_gradient_rule(self) -> bool:
        return self.params.clip == "per_variable"

    def clip_gradient(self, own: Sequence[Tensor | None], other: Sequence[Tensor | None],
                      epoch: int) -> list[Tensor | None]:
        """Per variable: ``own`` scaled down to norm ≤ ‖other‖·sigmoid(epoch −
        clip_ramp_start) (``tf.clip_by_norm``); a variable the rest of the loss does not
        reach keeps its gradient (nothing to measure it by), one it reaches with a zero
        gradient gets none."""
        ramp = 1.0 / (1.0 + math.exp(-(epoch - self.params.clip_ramp_start)))
        clipped: list[Tensor | None] = []
        for g, ref in zip(own, other):
            if g is None or ref is None:
                clipped.append(g)
                continue
            limit = ref.norm() * ramp
            norm = g.norm()
            scale = torch.where(norm > limit, limit / norm.clamp_min(torch.finfo(g.dtype).tiny),
                                torch.ones_like(norm))
            clipped.append(g * scale)
        return clipped

    def pretrain_optimizer(self) -> dict[str, Any]:
        """``TrainConfig`` settings of the first stage (empty: the engine's own)."""
        p = self.params
        if p.pretrain_optimizer == "same":
            return {}
        return {"optimizer": p.pretrain_optimizer, "lr": p.pretrain_lr,
                "momentum": p.pretrain_momentum, "weight_decay": p.pretrain_weight_decay,
                "schedule": "none"}

    def _teacher_vectors(
        self, teacher: Knowledge, rows: Callable[[Tensor], Tensor]
    ) -> list[Tensor]:
        return [
            teacher_vector(rows(teacher.feat(name)), self.params.svd_eps)
            for name in self.teacher_stages
        ]

    def _apply_freeze(self) -> None:
        self.attention.eval()
        self.attention.requires_grad_(False)


def _channels(shape: tuple[int, ...]) -> int:
    """Width of the singular vectors of a feature of this per-instance shape."""
    return shape[0] if len(shape) == 3 else math.prod(shape)


def _channel_map(shape: tuple[int, ...], dim: int) -> nn.Module:
    """Identity when the student's width already equals the teacher's, else a learned
    bias-free 1×1 convolution (feature maps) or Linear (vectors)."""
    width = _channels(shape)
    if width == dim:
        return nn.Identity()
    if len(shape) == 3:
        return nn.Conv2d(width, dim, kernel_size=1, bias=False)
    return nn.Sequential(nn.Flatten(1), nn.Linear(width, dim, bias=False))

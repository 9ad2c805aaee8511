"""MHGD: the safe SVD, singular-vector alignment, the graph KL by hand, both stages."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dglkd
from dglkd.errors import DglkdError
from dglkd.methods import Knowledge, MethodContext, build_method
from dglkd.methods.mhgd import (
    aligned_student_vector,
    clipped_branch,
    graph_kl,
    teacher_vector,
    top_right_singular_vectors,
)

STAGES = ["stage1", "stage2", "stage3"]


# Tiny tensors: intra-op threads only add waiting (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


# -- the SVD -------------------------------------------------------------------------------
def _with_singular_values(values: list[float], rows: int, cols: int) -> torch.Tensor:
    """A rows × cols matrix with exactly these singular values (len = min(rows, cols))."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(values), generator=g, dtype=torch.float64))
    return (u * torch.tensor(values, dtype=torch.float64)) @ v.t()


@pytest.mark.parametrize("rows", [10, 3])  # tall (C × C Gram) and wide (M × M Gram)
def test_singular_vectors_match_torch_svd(rows):
    x = torch.randn(4, rows, 6, dtype=torch.float64)
    ours = top_right_singular_vectors(x, 2)
    reference = torch.linalg.svd(x, full_matrices=False).Vh.transpose(1, 2)[..., :2]
    # singular vectors are defined up to sign
    assert torch.allclose(ours.abs(), reference.abs(), atol=1e-10)


def test_singular_vector_gradient_matches_finite_differences():
    x = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 4, dtype=torch.float64)

    def projector_loss(a: torch.Tensor) -> torch.Tensor:
        v = top_right_singular_vectors(a, 2, eps=1e-12)  # v vᵀ does not depend on signs
        return ((v @ v.transpose(1, 2)) * weights).sum()

    assert torch.autograd.gradcheck(projector_loss, (x,), atol=1e-6)


@pytest.mark.parametrize("rows, values", [(8, [2.0, 2.0, 1.0, 1.0]), (3, [2.0, 2.0, 1.0])])
def test_repeated_singular_values_give_finite_gradients(rows, values):
    # a tie among the kept vectors (and, tall, one among the others)
    x = _with_singular_values(values, rows, 4).unsqueeze(0).float().requires_grad_()
    top_right_singular_vectors(x, 2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() < 1e3
    # torch's own SVD gradient is infinite or huge here: what the safe version is for
    y = x.detach().clone().requires_grad_()
    torch.linalg.svd(y, full_matrices=False).Vh[..., :2, :].sum().backward()
    assert not torch.isfinite(y.grad).all() or y.grad.abs().max() > 1e4


def test_zero_feature_map_gives_finite_vectors_and_gradients():
    x = torch.zeros(2, 3, 5, 5, requires_grad=True)
    vector = teacher_vector(x, 1e-6)
    aligned_student_vector(x, vector.detach(), 4, 1e-6).sum().backward()
    assert torch.isfinite(vector).all() and torch.isfinite(x.grad).all()


# -- compression and alignment -----------------------------------------------------------
def test_teacher_vector_is_the_top_one_with_a_fixed_sign():
    # one image, 2 channels, 2×1 pixels; pixel rows (−3, 0) and (0, 1): top direction e1
    fmap = torch.tensor([[[[-3.0], [0.0]], [[0.0], [1.0]]]])
    assert torch.allclose(teacher_vector(fmap, 1e-6), torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(teacher_vector(-fmap, 1e-6), torch.tensor([[1.0, 0.0]]))


def test_student_keeps_the_candidate_best_aligned_with_the_teacher():
    # student pixels span e2 (σ = 5), e1 (σ = 2) and e3 (σ = 1) in 3 channels
    pixels = torch.tensor([[0.0, 5.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    fmap = pixels.t().reshape(1, 3, 3, 1)  # (B, C, H, W) with H·W = 3 pixels
    teacher = torch.tensor([[0.6, 0.0, 0.8]])
    # cosines with the teacher: e2 → 0, e1 → ±0.6, e3 → ±0.8; the third candidate wins
    chosen = aligned_student_vector(fmap, teacher, 4, 1e-6)
    assert torch.allclose(chosen, torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-6)
    # with two candidates only e2 and e1 compete: e1, signed to agree with the teacher
    chosen = aligned_student_vector(fmap, teacher, 2, 1e-6)
    assert torch.allclose(chosen, torch.tensor([[1.0, 0.0, 0.0]]), atol=1e-6)


# -- the graph KL by hand ------------------------------------------------------------------
def test_graph_kl_matches_hand_computation():
    student = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])  # 1 head, B = 2
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])

    def softmax_tanh(row: list[float]) -> list[float]:
        e = [math.exp(math.tanh(v)) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    for s_row, t_row in zip(student[0].tolist(), teacher[0].tolist()):
        ps, pt = softmax_tanh(s_row), softmax_tanh(t_row)
        total += sum(a * math.log(a / b) for a, b in zip(ps, pt))
    assert graph_kl(student, teacher, "sum").item() == pytest.approx(total, rel=1e-6)
    assert graph_kl(student, teacher, "mean").item() == pytest.approx(total / 2, rel=1e-6)


# -- gradient clipping at the feature maps -------------------------------------------------
def test_clipped_branch_scales_its_gradient_to_the_rest():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    # branch gradient (3, 4) (norm 5), rest gradient (0, 1) (norm 1)
    loss = (clipped_branch(x) * torch.tensor([3.0, 4.0])).sum() + x[1]
    loss.backward()
    assert torch.allclose(x.grad, torch.tensor([0.6, 1.0 + 0.8]))


def test_clipped_branch_leaves_small_or_lone_gradients_alone():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    ((clipped_branch(x) * 0.1).sum() + 5 * x.sum()).backward()
    assert torch.allclose(x.grad, torch.tensor([5.1, 5.1]))
    y = torch.tensor([1.0, 2.0], requires_grad=True)
    (clipped_branch(y) * 7).sum().backward()  # nothing else to follow: unclipped
    assert torch.allclose(y.grad, torch.tensor([7.0, 7.0]))


# -- the method, both stages ---------------------------------------------------------------
class TinyCNN(nn.Module):
    """Three stages (8×8, 4×4, 2×2) returning their maps and logits."""

    def __init__(self, widths: tuple[int, int, int]) -> None:
        super().__init__()
        a, b, c = widths
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(3, a, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(b, c, 3, stride=2, padding=1), nn.ReLU()),
        ])
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> Knowledge:
        feats = {}
        for name, stage in zip(STAGES, self.stages):
            x = stage(x)
            feats[name] = x
        return Knowledge(self.fc(x.mean((2, 3))), feats)


def _setup(seed: int = 0, **params):
    torch.manual_seed(seed)
    teacher, student = TinyCNN((4, 8, 16)), TinyCNN((4, 6, 8))  # stages 2, 3 differ in width
    images = torch.randn(16, 3, 8, 8)
    shapes = {"teacher": {}, "student": {}}
    for side, net in (("teacher", teacher), ("student", student)):
        with torch.no_grad():
            shapes[side] = {k: tuple(v.shape[1:]) for k, v in net(images[:2]).feats.items()}
    context = MethodContext(5, student_shapes=shapes["student"], teacher_shapes=shapes["teacher"])
    method = build_method("mhgd", context, **{"heads": 4, **params})
    return teacher, student, images, method


def _pretrain(method, teacher_knowledge, steps: int) -> list[float]:
    method.train()
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=0.01)
    losses = []
    for _ in range(steps):
        loss = method.pretrain_terms(teacher_knowledge)["mha"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_stage1_lowers_the_prediction_loss():
    teacher, _, images, method = _setup(drop_heads=False)
    assert method.pretrain_epochs() == 40
    with torch.no_grad():
        knowledge = teacher(images)
    losses = _pretrain(method, knowledge, 60)
    assert losses[-1] < 0.5 * losses[0]


def test_stage1_trains_the_attention_modules_only():
    teacher, _, images, method = _setup()
    knowledge = teacher(images)
    method.train()
    method.pretrain_terms(knowledge)["mha"].backward()
    assert all(p.grad is not None for p in method.attention.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_stage2_freezes_the_modules_and_trains_the_student():
    teacher, student, images, method = _setup(seed=1)
    with torch.no_grad():
        t_knowledge = teacher(images)
    _pretrain(method, t_knowledge, 20)
    method.end_pretraining()
    method.train()  # the engine may switch modes: the frozen modules must stay in eval
    assert not method.attention.training
    before = {k: v.clone() for k, v in method.attention.state_dict().items()}
    params = [*student.parameters(), *[p for p in method.parameters() if p.requires_grad]]
    opt = torch.optim.Adam(params, lr=0.01)
    losses = []
    for _ in range(40):
        loss = method(student(images), t_knowledge)["mhgd"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    after = method.attention.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BatchNorm statistics


def test_stage2_gradients_reach_student_and_channel_maps_not_teacher_or_modules():
    teacher, student, images, method = _setup()
    recipe = dglkd.compose(ce=1.0, kd=1.0, mhgd=method, context=5)  # "MHGD+KD"
    assert recipe.pretrain_epochs() == 40  # the recipe runs MHGD's first stage
    recipe.end_pretraining()
    assert bool(method.frozen)
    terms = recipe(student(images), teacher(images), labels=torch.randint(0, 5, (16,)))
    assert set(terms) == {"ce", "kd", "mhgd"}
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in method.attention.parameters())
    assert isinstance(method.student_maps[0], nn.Identity)  # equal widths: no map
    maps = [m for m in method.student_maps if not isinstance(m, nn.Identity)]
    assert len(maps) == 2 and all(m.weight.grad is not None for m in maps)
    stage_grads = [p.grad for stage in student.stages for p in stage.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in stage_grads)


def test_distilling_without_a_first_stage_freezes_the_modules():
    teacher, student, images, method = _setup(pretrain_epochs=0)
    assert method.pretrain_epochs() == 0
    method(student(images), teacher(images), labels=torch.zeros(16, dtype=torch.long))
    assert bool(method.frozen) and not any(p.requires_grad for p in method.attention.parameters())


def test_frozen_state_survives_a_checkpoint():
    _, _, _, method = _setup()
    method.end_pretraining()
    _, _, _, fresh = _setup()
    fresh.load_state_dict(method.state_dict())
    assert bool(fresh.frozen) and not fresh.train().attention.training


def test_stage_lists_of_different_length_are_a_one_line_error():
    with pytest.raises(DglkdError, match="teacher_stages"):
        _setup(teacher_stages=["stage1", "stage3"])
    with pytest.raises(DglkdError, match="stages"):
        _setup(stages=["stage1"])


# -- the authors' per-variable clip with its ramp (issue 10) ------------------------------------
def test_per_variable_clip_with_ramp_matches_hand_computation():
    _, _, _, method = _setup(clip_ramp_start=2)
    assert method.params.clip == "per_variable" and method.params.reduction == "sum"
    own = [torch.tensor([3.0, 4.0]), torch.tensor([[0.3], [0.4]]), torch.tensor([1.0])]
    other = [torch.tensor([0.0, 2.0]), torch.tensor([[6.0], [8.0]]), None]
    ramp = 1 / (1 + math.exp(-(3 - 2)))  # epoch 3, ramp start 2: sigmoid(1)
    clipped = method.clip_gradient(own, other, epoch=3)
    # variable 1: ‖own‖ = 5 > 2·ramp → scaled to norm 2·ramp; variable 2: 0.5 < 10·ramp
    assert torch.allclose(clipped[0], own[0] * (2 * ramp / 5))
    assert torch.allclose(clipped[0].norm(), torch.tensor(2 * ramp))
    assert torch.equal(clipped[1], own[1])
    assert torch.equal(clipped[2], own[2])  # the rest does not reach it: left alone
    at_start = method.clip_gradient(own, other, epoch=2)  # sigmoid(0) = 1/2
    assert torch.allclose(at_start[0].norm(), torch.tensor(1.0))
    zero = method.clip_gradient(own[:1], [torch.zeros(2)], epoch=2)
    assert torch.equal(zero[0], torch.zeros(2))


def test_recipe_backward_clips_mhgd_per_student_variable():
    teacher, student, images, method = _setup(seed=2, clip_ramp_start=1)
    method.end_pretraining()
    recipe = dglkd.compose(ce=1.0, mhgd=method, context=5)
    recipe.set_epoch(1)  # ramp sigmoid(0) = 1/2
    labels = torch.randint(0, 5, (16,))
    with torch.no_grad():
        t_knowledge = teacher(images)
    params = list(student.parameters())
    # by hand: the two gradients separately, the MHGD one clipped per variable
    terms = recipe(student(images), t_knowledge, labels=labels)
    g_ce = torch.autograd.grad(terms["ce"], params, retain_graph=True)
    g_mhgd = torch.autograd.grad(terms["mhgd"], params, allow_unused=True)
    expected = []
    for ce, own in zip(g_ce, g_mhgd):
        own = torch.zeros_like(ce) if own is None else own
        limit = 0.5 * ce.norm()
        expected.append(ce + own * min(1.0, (limit / own.norm()).item() if own.norm() > 0
                                       else 1.0))
    assert any(g is not None and g.norm() > 0.5 * c.norm() for g, c in zip(g_mhgd, g_ce))
    student.zero_grad()
    terms = recipe(student(images), t_knowledge, labels=labels)
    recipe.backward(terms, student)
    for param, want in zip(params, expected):
        assert torch.allclose(param.grad, want, rtol=1e-4, atol=1e-6)
    maps = [m for m in method.student_maps if not isinstance(m, nn.Identity)]
    assert all(m.weight.grad is not None for m in maps)  # its own modules: plain gradient


def test_clip_options_and_first_stage_optimizer():
    _, _, _, none = _setup(clip="none")
    _, _, _, fmap = _setup(clip="feature_map")
    assert not none.has_gradient_rule() and not fmap.has_gradient_rule()
    _, _, _, method = _setup()
    assert method.pretrain_optimizer() == {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
                                           "weight_decay": 5e-4, "schedule": "none"}
    recipe = dglkd.compose(ce=1.0, mhgd=method, context=5)
    assert recipe.pretrain_optimizer()["optimizer"] == "sgd"
    _, _, _, same = _setup(pretrain_optimizer="same")
    assert same.pretrain_optimizer() == {}
    with pytest.raises(DglkdError, match="clip"):
        _setup(clip="global")


def _digits_cnn(widths: tuple[int, int, int], classes: int = 10) -> nn.Module:
    """TinyCNN on 1×8×8 digits."""
    net = TinyCNN(widths)
    net.stages[0][0] = nn.Conv2d(1, widths[0], 3, padding=1)
    net.fc = nn.Linear(widths[2], classes)
    return net


def test_training_on_digits_lowers_the_mhgd_term_and_learns():
    # real data (scikit-learn's 8×8 digits): a briefly trained teacher, stage 1, then
    # ce + mhgd with the authors' clip through Recipe.backward
    from dglkd.data import load

    task = load("digits", train_size=512, val_size=100, seed=0)
    train = task.splits["train"]
    x, y = task.images[train], task.labels[train]
    torch.manual_seed(0)
    teacher, student = _digits_cnn((8, 16, 32)), _digits_cnn((4, 8, 16))
    opt = torch.optim.Adam(teacher.parameters(), lr=0.01)
    for _ in range(3):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(teacher(x[i:i + 64]).logits, y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    teacher.eval()
    with torch.no_grad():
        shapes = {side: {k: tuple(v.shape[1:]) for k, v in net(x[:2]).feats.items()}
                  for side, net in (("teacher", teacher), ("student", student))}
    context = MethodContext(10, student_shapes=shapes["student"], teacher_shapes=shapes["teacher"])
    recipe = dglkd.compose(ce=1.0, mhgd={"heads": 4}, context=context)
    with torch.no_grad():
        t_all = teacher(x)
    _pretrain(recipe.members["mhgd"], t_all, 30)
    recipe.end_pretraining()
    params = [*student.parameters(), *[p for p in recipe.parameters() if p.requires_grad]]
    opt = torch.optim.Adam(params, lr=0.01)
    per_epoch = []
    for epoch in range(4):
        recipe.set_epoch(epoch)
        recipe.train()
        seen = []
        for i in range(0, len(x), 64):
            terms = recipe(student(x[i:i + 64]), t_all.rows(slice(i, i + 64)),
                           labels=y[i:i + 64])
            opt.zero_grad()
            recipe.backward(terms, student)
            opt.step()
            seen.append(terms["mhgd"].item())
        per_epoch.append(sum(seen) / len(seen))
    assert per_epoch[-1] < 0.9 * per_epoch[0]
    test = task.splits["test"]
    student.eval()
    with torch.no_grad():
        acc = (student(task.images[test]).logits.argmax(1) == task.labels[test]).float().mean()
    assert acc > 0.5  # chance is 0.1

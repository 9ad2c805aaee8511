"""CRD (Tian et al., ICLR 2020): hand-computed loss, memory bank, training."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dglkd
from dglkd.methods import DistillBatch, Knowledge, MethodContext, build_method
from dglkd.methods.recipe import build_recipe, recipe_spec

T = 0.5
# Five dataset instances of classes [0, 1, 0, 1, 2]; the batch holds instances 4, 0, 1.
LABELS = torch.tensor([0, 1, 0, 1, 2])
INDEX = torch.tensor([4, 0, 1])
MEMORY = {
    "student": F.normalize(torch.tensor([[1.0, 0], [0, 1], [1, 1], [1, -1], [-1, 2]]), dim=1),
    "teacher": F.normalize(torch.tensor([[0.0, 1], [1, 0], [-1, 1], [2, 1], [1, 3]]), dim=1),
}
FS = torch.tensor([[3.0, 4.0], [1.0, 0.0], [-2.0, 2.0]])  # not unit: the embed normalises
FT = torch.tensor([[0.0, 2.0], [1.0, 1.0], [5.0, -5.0]])


def context(n=5, labels=LABELS, dim=2, classes=3, teacher_dim=None):
    return MethodContext(classes, n, {"hidden": (dim,)}, {"hidden": (teacher_dim or dim,)},
                         instance_labels=labels)


def tiny_crd(**params):
    options = dict(embed_dim=2, nce_temperature=T, num_negatives=64)
    options.update(params)
    method = build_method("crd", context(), **options)
    with torch.no_grad():
        for side in ("student", "teacher"):
            method.embed[side].weight.copy_(torch.eye(2))
            method.embed[side].bias.zero_()
            getattr(method.bank, side).copy_(MEMORY[side])
    return method


def nce(anchor, positive, negatives):
    pos = float(anchor @ positive) / T
    neg = [float(anchor @ n) / T for n in negatives]
    return -(pos - math.log(math.exp(pos) + sum(math.exp(v) for v in neg)))


def test_defaults_follow_the_authors():
    method = build_method("crd", context())
    p = method.params
    assert (p.momentum, p.nce_temperature, p.num_negatives, p.embed_dim) == (0.5, 0.07, 16384, 128)
    assert str(method) == "crd: loss = 1*crd"
    assert method.required_features() == (["hidden"], ["hidden"])
    # The authors' recipe: β = 0.8 next to CE, no KD (α = 0).
    recipe = build_recipe(recipe_spec({"name": "crd"}), context())
    assert recipe.term_weights() == {"ce": 1.0, "crd": 0.8}
    assert str(recipe) == "ce+crd: loss = 1*ce + 0.8*crd"
    assert recipe.required_features() == (["hidden"], ["hidden"])


def test_loss_matches_hand_computation_and_memory_moves_with_momentum():
    method = tiny_crd()
    terms = method(Knowledge(torch.zeros(3, 3), {"hidden": FS}),
                   Knowledge(torch.zeros(3, 3), {"hidden": FT}), index=INDEX)
    zs, zt = F.normalize(FS, dim=1), F.normalize(FT, dim=1)
    student_to_teacher = teacher_to_student = 0.0
    for r, i in enumerate(INDEX.tolist()):
        other_classes = LABELS != LABELS[i]
        student_to_teacher += nce(zs[r], MEMORY["teacher"][i], MEMORY["teacher"][other_classes])
        teacher_to_student += nce(zt[r], MEMORY["student"][i], MEMORY["student"][other_classes])
    assert set(terms) == {"crd"}
    assert terms["crd"].item() == pytest.approx((student_to_teacher + teacher_to_student) / 3,
                                                abs=1e-5)
    for r, i in enumerate(INDEX.tolist()):
        for side, z in (("student", zs), ("teacher", zt)):
            expected = F.normalize(0.5 * MEMORY[side][i] + 0.5 * z[r], dim=0)
            assert torch.allclose(getattr(method.bank, side)[i], expected, atol=1e-6)
    untouched = [2, 3]
    assert torch.equal(method.bank.student[untouched], MEMORY["student"][untouched])


def test_evaluation_leaves_the_memory_alone():
    method = tiny_crd().eval()
    method(Knowledge(torch.zeros(3, 3), {"hidden": FS}), Knowledge(torch.zeros(3, 3), {"hidden": FT}),
           index=INDEX)
    assert torch.equal(method.bank.teacher, MEMORY["teacher"])


def test_gradients_reach_the_student_and_both_embeds_not_the_teacher():
    method = tiny_crd()
    recipe = dglkd.compose(ce=1.0, kd=1.0, crd=(1.0, method), context=3)  # "CRD+KD"
    fs, ft = FS.clone().requires_grad_(), FT.clone().requires_grad_()
    logits_t = torch.randn(3, 3, requires_grad=True)
    terms = recipe(Knowledge(torch.randn(3, 3), {"hidden": fs}), Knowledge(logits_t, {"hidden": ft}),
                   labels=LABELS[INDEX], index=INDEX)
    assert set(terms) == {"ce", "kd", "crd"}
    sum(terms.values()).backward()
    assert fs.grad.abs().sum() > 0
    assert ft.grad is None and logits_t.grad is None
    assert method.embed["teacher"].weight.grad.abs().sum() > 0
    assert method.embed["student"].weight.grad.abs().sum() > 0


def test_the_pool_holds_num_negatives_rows_when_the_data_is_larger():
    labels = torch.arange(50) % 5
    method = build_method("crd", context(50, labels, 4, 5), num_negatives=16, embed_dim=8)
    batch_feats = {"hidden": torch.randn(6, 4)}
    batch = DistillBatch(Knowledge(torch.randn(6, 5), batch_feats),
                         Knowledge(torch.randn(6, 5), batch_feats), index=torch.arange(6))
    targets = method.targets(method.view(batch))
    assert targets.pool["teacher"].shape == (16, 8)
    assert targets.skip.shape == (6, 16)


def structured_data(n=600, classes=10, dim=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=gen) * 2
    x = centres[y] + torch.randn(n, dim, generator=gen)
    teacher_feat = torch.tanh(x @ torch.randn(dim, 32, generator=gen))
    return x, y, teacher_feat


@pytest.mark.parametrize("negatives", ["memory", "batch"])
def test_training_lowers_the_crd_loss(negatives, one_thread):
    torch.manual_seed(0)
    x, y, teacher_feat = structured_data()
    student = nn.Sequential(nn.Linear(20, 16), nn.ReLU())
    method = dglkd.compose(crd={"weight": 0.8, "embed_dim": 16, "num_negatives": 128,
                                "negatives": negatives},
                           context=context(len(x), y, 16, 10, teacher_dim=32))
    optimizer = torch.optim.Adam([*student.parameters(), *method.parameters()], lr=0.01)
    losses = []
    for _ in range(6):
        for index in torch.randperm(len(x)).split(100):
            no_logits = torch.zeros(len(index), 10)
            terms = method(Knowledge(no_logits, {"hidden": student(x[index])}),
                           Knowledge(no_logits, {"hidden": teacher_feat[index]}),
                           labels=y[index], index=index)
            optimizer.zero_grad()
            terms["crd"].backward()
            optimizer.step()
            losses.append(terms["crd"].item())
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.8 * first

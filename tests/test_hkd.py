"""HKD (Zhou et al., ICCV 2021): hand-computed losses, gradients, dense vs DGL, training."""
import math

import dgl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dglkd
from dglkd.errors import DglkdError
from dglkd.methods import DistillBatch, Knowledge, MethodContext, build_method
from dglkd.methods.recipe import build_recipe, recipe_spec

# Four instances, classes [0, 0, 1, 1]; unit-length 2-d features, so z = feature when the
# embeds are the identity.
FS = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
FT = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.8, -0.6], [0.0, 1.0]])
# Student logits pair up rows (0, 1) and (2, 3); teacher logits pair (0, 2) and (1, 3).
LS = torch.tensor([[5.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 4.0, 0.0]])
LT = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [4.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
NEIGHBOURS_S = [[0, 1], [1, 0], [2, 3], [3, 2]]  # with k = 2, self counted
NEIGHBOURS_T = [[0, 2], [1, 3], [2, 0], [3, 1]]
W_S = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, -0.5]])
B_S = torch.tensor([0.1, -0.2])
W_T = torch.tensor([[0.5, 0.2, 1.0, 0.0], [0.0, 1.0, 0.3, 1.0]])
B_T = torch.tensor([0.0, 0.3])
T = 0.5


def context(num_instances=0, labels=None, dim=2, classes=3):
    return MethodContext(num_classes=classes, num_instances=num_instances,
                         student_shapes={"hidden": (dim,)}, teacher_shapes={"hidden": (dim,)},
                         instance_labels=labels)


def small_hkd(**params):
    options = dict(embed_dim=2, k=2, nce_temperature=T, negatives="batch")
    options.update(params)
    method = build_method("hkd", context(options.pop("num_instances", 0),
                                         options.pop("labels", None)), **options)
    with torch.no_grad():
        for side in ("student", "teacher"):
            method.embed[side].weight.copy_(torch.eye(2))
            method.embed[side].bias.zero_()
        method.encoder["student"].conv.lin.weight.copy_(W_S)
        method.encoder["student"].conv.lin.bias.copy_(B_S)
        method.encoder["teacher"].conv.lin.weight.copy_(W_T)
        method.encoder["teacher"].conv.lin.bias.copy_(B_T)
    return method


def knowledge(logits, feat):
    return Knowledge(logits, {"hidden": feat})


def nce(anchor, positive, negatives):
    """−log of the positive's share among exp(positive), exp(negatives), at temperature T."""
    pos = float(anchor @ positive) / T
    neg = [float(anchor @ n) / T for n in negatives]
    return -(pos - math.log(math.exp(pos) + sum(math.exp(v) for v in neg)))


def holistic_by_hand(z, neighbours, weight, bias):
    rows = [torch.cat([z[i], z[nbrs].mean(0)]) for i, nbrs in enumerate(neighbours)]
    return F.normalize(torch.stack(rows) @ weight.t() + bias, dim=1)


def mix(memory, current):
    return F.normalize(0.75 * memory + 0.25 * current, dim=0)


HS = holistic_by_hand(FS, NEIGHBOURS_S, W_S, B_S)
HT = holistic_by_hand(FT, NEIGHBOURS_T, W_T, B_T)


def test_loss_with_in_batch_negatives_matches_hand_computation():
    method = small_hkd()
    terms = method(knowledge(LS, FS), knowledge(LT, FT), labels=torch.tensor([0, 0, 1, 1]))
    others = [[2, 3], [2, 3], [0, 1], [0, 1]]
    individual = sum(nce(FS[i], FT[i], FT[others[i]]) + nce(FT[i], FS[i], FS[others[i]])
                     for i in range(4)) / 4
    graph = sum(nce(HS[i], mix(FT[i], HT[i]), FT[others[i]])
                + nce(HT[i], mix(FS[i], HS[i]), FS[others[i]]) for i in range(4)) / 4
    assert set(terms) == {"hkd"}
    assert terms["hkd"].item() == pytest.approx(individual + graph, abs=1e-5)


@pytest.mark.parametrize("negatives_from", ["other", "own"])
def test_loss_with_a_tiny_memory_bank_matches_hand_computation(negatives_from):
    # Batch row r is dataset instance INDEX[r]; labels by instance make rows [0, 0, 1, 1].
    index, labels = torch.tensor([3, 2, 1, 0]), torch.tensor([1, 1, 0, 0])
    memory = {"student": F.normalize(torch.tensor([[1.0, 1], [1, -1], [0, 1], [-1, 0.5]]), dim=1),
              "teacher": F.normalize(torch.tensor([[0.5, 1], [1, 0], [1, 1], [0, -1]]), dim=1)}
    method = small_hkd(negatives="memory", num_instances=4, labels=labels, num_negatives=64,
                       negatives_from=negatives_from)
    with torch.no_grad():
        method.bank.student.copy_(memory["student"])
        method.bank.teacher.copy_(memory["teacher"])
    terms = method(knowledge(LS, FS), knowledge(LT, FT), index=index)

    def negatives(anchor_side, i):
        side = anchor_side if negatives_from == "own" else other[anchor_side]
        return memory[side][labels != labels[i]]

    other = {"student": "teacher", "teacher": "student"}
    total = 0.0
    for r, i in enumerate(index.tolist()):
        total += nce(FS[r], memory["teacher"][i], negatives("student", i))
        total += nce(FT[r], memory["student"][i], negatives("teacher", i))
        total += nce(HS[r], mix(memory["teacher"][i], HT[r]), negatives("student", i))
        total += nce(HT[r], mix(memory["student"][i], HS[r]), negatives("teacher", i))
    assert terms["hkd"].item() == pytest.approx(total / 4, abs=1e-5)
    # The memory moved towards this batch's individual embeddings, momentum 0.9.
    for r, i in enumerate(index.tolist()):
        expected = F.normalize(0.9 * memory["student"][i] + 0.1 * FS[r], dim=0)
        assert torch.allclose(method.bank.student[i], expected, atol=1e-6)


def random_batch(b=16, classes=5, dim=12, seed=0, n=100):
    gen = torch.Generator().manual_seed(seed)
    student = knowledge(torch.randn(b, classes, generator=gen, requires_grad=True),
                        torch.randn(b, dim, generator=gen, requires_grad=True))
    teacher = knowledge(torch.randn(b, classes, generator=gen, requires_grad=True),
                        torch.randn(b, dim, generator=gen, requires_grad=True))
    index = torch.randperm(n, generator=gen)[:b]
    labels = torch.arange(n) % classes
    return student, teacher, index, labels


def memory_hkd(n=100, classes=5, dim=12, **params):
    labels = torch.arange(n) % classes
    options = dict(embed_dim=8, k=4, num_negatives=32)
    options.update(params)
    return build_method("hkd", context(n, labels, dim, classes), **options)


def test_gradients_reach_student_and_method_modules_never_the_teacher():
    # HKD+KD, the paper's recipe: ce + kd + 3·hkd, HKD's constants given to HKD alone.
    n, classes, dim = 100, 5, 12
    recipe = build_recipe(recipe_spec({"name": "hkd", "embed_dim": 8, "k": 4,
                                       "num_negatives": 32}),
                          context(n, torch.arange(n) % classes, dim, classes))
    assert recipe.term_weights() == {"ce": 1.0, "kd": 1.0, "hkd": 3.0}
    method = recipe.members["hkd"]
    assert (method.params.embed_dim, method.params.k) == (8, 4)
    student, teacher, index, labels = random_batch()
    terms = recipe(student, teacher, labels=labels[index], index=index)
    assert list(terms) == ["ce", "kd", "hkd"]
    sum(terms.values()).backward()
    assert student.feats["hidden"].grad.abs().sum() > 0
    assert student.logits.grad.abs().sum() > 0
    assert teacher.feats["hidden"].grad is None and teacher.logits.grad is None
    for module in (method.embed["student"], method.embed["teacher"],
                   method.encoder["student"], method.encoder["teacher"]):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_dense_and_dgl_paths_agree():
    dense = memory_hkd(graph_backend="dense")
    dgl_path = memory_hkd(graph_backend="dgl")
    dgl_path.load_state_dict(dense.state_dict())
    assert dense.dense and not dgl_path.dense
    student, teacher, index, labels = random_batch(b=24)
    batch = DistillBatch(student, teacher.detach(), labels[index], index=index)
    h_dense, h_dgl = dense.holistic(batch), dgl_path.holistic(batch)
    for side in ("student", "teacher"):
        assert torch.allclose(h_dense[side], h_dgl[side], atol=1e-5)
    losses = []
    for method in (dense, dgl_path):
        torch.manual_seed(7)  # the same pool of negatives for both
        terms = method(student, teacher, labels=labels[index], index=index)
        grad, = torch.autograd.grad(terms["hkd"], student.feats["hidden"])
        losses.append((terms["hkd"].item(), grad))
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-5)
    assert torch.allclose(losses[0][1], losses[1][1], atol=1e-5)


def test_dense_and_dgl_paths_start_from_the_same_weights():
    # The dense path holds TAGConv's parameters without DGL (issue 26): from one seed both
    # backends build the same state dict, so a config gives the same run on either.
    states = []
    for backend in ("dense", "dgl"):
        torch.manual_seed(11)
        states.append(memory_hkd(graph_backend=backend, encoder_hops=2).state_dict())
    assert list(states[0]) == list(states[1])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


@pytest.mark.parametrize("encoder", ["graphconv", "sage", "gat"])
def test_other_encoders_run_through_dgl(encoder):
    method = memory_hkd(encoder=encoder, encoder_heads=2)
    assert not method.dense
    student, teacher, index, labels = random_batch()
    h = method.holistic(DistillBatch(student, teacher.detach(), index=index))
    assert h["student"].shape == (16, 8)
    assert torch.allclose(h["teacher"].norm(dim=1), torch.ones(16), atol=1e-5)
    method(student, teacher, index=index)["hkd"].backward()


def test_graph_term_is_skipped_when_the_batch_is_smaller_than_k():
    method = memory_hkd(k=8).eval()  # eval: the memory stays as it is between the calls
    student, teacher, index, _ = random_batch(b=5)
    torch.manual_seed(0)
    before = method(student, teacher, index=index)["hkd"]
    with torch.no_grad():
        for encoder in method.encoder.values():
            encoder.conv.lin.weight.mul_(-3.0)
    torch.manual_seed(0)
    after = method(student, teacher, index=index)["hkd"]
    assert after.item() == pytest.approx(before.item(), abs=1e-6)
    before.backward()
    assert all(p.grad is None for p in method.encoder.parameters())


def test_single_class_batch_leaves_no_negatives_and_no_nan():
    method = small_hkd()
    features = FS.clone().requires_grad_()
    terms = method(knowledge(LS, features), knowledge(LT, FT),
                   labels=torch.zeros(4, dtype=torch.long))
    assert terms["hkd"].item() == 0.0
    terms["hkd"].backward()
    assert not torch.isnan(features.grad).any()


def test_memory_changes_only_in_training_and_learns_labels():
    method = memory_hkd(n=20)
    method.bank.labels.fill_(-1)
    student, teacher, index, labels = random_batch(b=6, n=20)
    memory = method.bank.student.clone()
    method.eval()
    method(student, teacher, labels=labels[index], index=index)
    assert torch.equal(method.bank.student, memory)
    assert (method.bank.labels == -1).all()
    method.train()
    method(student, teacher, labels=labels[index], index=index)
    assert not torch.equal(method.bank.student[index], memory[index])
    assert torch.equal(method.bank.labels[index], labels[index])


def test_native_graph_relation_gnn_to_mlp():
    torch.manual_seed(0)
    n = 30
    graph = dgl.add_self_loop(dgl.rand_graph(n, 90))
    student, teacher, _, _ = random_batch(b=n, n=n)
    mask = torch.arange(n) < 20
    method = memory_hkd(n=n, relation="native", graph_backend="auto")
    assert not method.dense
    batch = DistillBatch(student, teacher.detach(), graph=graph, distill_mask=mask,
                         index=torch.arange(n))
    assert method.holistic(batch)["student"].shape == (20, 8)
    memory = method.bank.teacher.clone()
    terms = method(student, teacher, graph=graph, distill_mask=mask, index=torch.arange(n))
    terms["hkd"].backward()
    assert torch.equal(method.bank.teacher[20:], memory[20:])  # hidden rows untouched
    assert method.encoder["student"].conv.lin.weight.grad is not None
    with pytest.raises(DglkdError, match="needs a graph"):
        method(student, teacher, index=torch.arange(n))


def test_required_features_name_what_is_read():
    assert memory_hkd().required_features() == (["hidden"], ["hidden"])
    labels = torch.arange(100) % 5
    method = build_method("hkd", MethodContext(
        5, 100, {"h": (12,), "pen": (4,)}, {"h": (6,), "pen": (4,)}, labels),
        student_feature="h", teacher_feature="h", knn_feature="pen")
    assert method.required_features() == (["h", "pen"], ["h", "pen"])


@pytest.mark.parametrize(
    "params, num_instances, message",
    [
        ({"graph_backend": "dense", "encoder": "gat"}, 10, "graph_backend"),
        ({"graph_backend": "dense", "relation": "native"}, 10, "graph_backend"),
        ({}, 0, "num_instances"),
        ({"positive_mix": 1.5}, 10, "positive_mix"),
        ({"encoder": "gin"}, 10, "encoder"),
        ({"momentun": 0.9}, 10, "momentun"),
        ({"kd_weight": 1.0}, 10, "kd_weight"),  # KD is a method of its own in a recipe
    ],
)
def test_bad_configuration_raises_one_line(params, num_instances, message):
    with pytest.raises(DglkdError, match=message) as info:
        build_method("hkd", context(num_instances), **params)
    assert "\n" not in str(info.value)


def test_memory_mode_needs_valid_indices():
    method = memory_hkd(n=10)
    student, teacher, _, _ = random_batch(b=4)
    with pytest.raises(DglkdError, match="index"):
        method(student, teacher)
    with pytest.raises(DglkdError, match=r"\[0, 10\)"):
        method(student, teacher, index=torch.tensor([0, 1, 2, 10]))


def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)


class MLP(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(64, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, 10)

    def forward(self, x):
        h = self.hidden(x)
        return Knowledge(self.out(h), {"hidden": h})


def trained_teacher(x, y):
    teacher = MLP(32)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=0.01)
    for _ in range(100):
        optimizer.zero_grad()
        F.cross_entropy(teacher(x).logits, y).backward()
        optimizer.step()
    return teacher


@pytest.mark.parametrize("negatives", ["batch", "memory"])
def test_training_lowers_the_hkd_loss_on_digits(negatives, one_thread):
    torch.manual_seed(0)
    x, y = digits()
    teacher = trained_teacher(x, y)
    with torch.no_grad():
        teacher_knowledge = teacher(x)
    student = MLP(16)
    method = dglkd.compose(
        hkd={"weight": 3.0, "embed_dim": 32, "num_negatives": 256, "negatives": negatives},
        context=MethodContext(10, len(x), {"hidden": (16,)}, {"hidden": (32,)},
                              instance_labels=y),
    )
    optimizer = torch.optim.Adam([*student.parameters(), *method.parameters()], lr=0.005)
    losses = []
    for epoch in range(8):
        for index in torch.randperm(len(x)).split(128):
            terms = method(student(x[index]), Knowledge(
                teacher_knowledge.logits[index],
                {"hidden": teacher_knowledge.feats["hidden"][index]}),
                labels=y[index], index=index)
            optimizer.zero_grad()
            terms["hkd"].backward()
            optimizer.step()
            losses.append(terms["hkd"].item())
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.8 * first

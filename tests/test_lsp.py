"""LSP: hand-computed values, every kernel against a loop reference, zero in-degree safety,
gradients, dynamic (union kNN) graphs and a short training run."""
from __future__ import annotations

import math

import dgl
import pytest
import torch
from torch import nn

import dglkd
from dglkd.errors import DglkdError
from dglkd.graphs import knn_instance_graph, union_graph
from dglkd.methods import Knowledge, MethodContext, build_method
from dglkd.methods.lsp import LSPParams, local_structure_kl

KERNELS = ["l1", "linear", "poly", "rbf", "cosine"]


def _graph(src: list[int], dst: list[int], n: int) -> dgl.DGLGraph:
    ids = [torch.tensor(v, dtype=torch.long) for v in (src, dst)]
    return dgl.graph(tuple(ids), num_nodes=n)


def _knowledge(feat: torch.Tensor, classes: int = 3) -> Knowledge:
    return Knowledge(torch.zeros(len(feat), classes), {"hidden": feat})


def _lsp(**params) -> nn.Module:
    return build_method("lsp", MethodContext(num_classes=3), **params)


def test_l1_kernel_matches_hand_computation():
    # node 0 has in-neighbours 1 and 2; node 1 has one (0); node 2 has none
    graph = _graph([1, 2, 0], [0, 0, 1], 3)
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # L1 distances to 0: 1, 2
    student = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])  # L1 distances to 0: 2, 1
    # the paper's normalised kernel, averaged over nodes with in-neighbours (the authors'
    # defaults are checked by hand in test_authors_defaults_match_hand_computation)
    terms = _lsp(l1_scale=1.0, kernel_as_logit=False, average_over="with_neighbours")(
        _knowledge(student), _knowledge(teacher), graph=graph)
    # teacher: softmax(-1, -2) = (a, b); student: (b, a); KL = (a - b) log(a / b) = a - b.
    a = 1 / (1 + math.exp(-1))
    b = 1 - a
    node0 = a * math.log(a / b) + b * math.log(b / a)
    # node 1's single neighbour gives KL 0; node 2 (no in-edges) is left out of the mean
    assert terms["lsp"].item() == pytest.approx(node0 / 2, rel=1e-6)
    assert node0 / 2 == pytest.approx(math.tanh(0.5) / 2)


def _kernel(name: str, x: list[float], y: list[float], p: LSPParams) -> float:
    dot = sum(a * b for a, b in zip(x, y))
    if name == "l1":
        return -sum(abs(a - b) for a, b in zip(x, y)) / p.l1_scale
    if name == "rbf":
        return -p.rbf_gamma * sum((a - b) ** 2 for a, b in zip(x, y))
    if name == "linear":
        return dot
    if name == "poly":
        return (dot + p.poly_coef) ** p.poly_degree
    norm = math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in y))
    return dot / norm


def _reference(graph: dgl.DGLGraph, s: torch.Tensor, t: torch.Tensor, p: LSPParams) -> float:
    """Plain-Python loops over every node's in-neighbours."""
    src, dst = (v.tolist() for v in graph.edges())
    s, t = s.tolist(), t.tolist()
    kls = []
    for i in range(graph.num_nodes()):
        nbrs = [u for u, v in zip(src, dst) if v == i]
        if not nbrs:
            continue
        lt = [_kernel(p.kernel, t[j], t[i], p) for j in nbrs]
        ls = [_kernel(p.kernel, s[j], s[i], p) for j in nbrs]
        if p.kernel_as_logit and p.kernel in ("l1", "rbf"):
            lt, ls = [math.exp(v) for v in lt], [math.exp(v) for v in ls]
        zt, zs = sum(math.exp(v) for v in lt), sum(math.exp(v) for v in ls)
        pt, ps = [math.exp(v) / zt for v in lt], [math.exp(v) / zs for v in ls]
        kls.append(sum(a * math.log(a / b) for a, b in zip(pt, ps)))
    # average_over "all": nodes without in-neighbours count, with KL 0
    return sum(kls) / (len(kls) if p.average_over == "with_neighbours" else graph.num_nodes())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("as_logit", [False, True])
def test_every_kernel_matches_loop_reference(kernel, as_logit):
    torch.manual_seed(1)
    graph = dgl.rand_graph(9, 30)
    graph = dgl.add_nodes(graph, 2)  # two isolated nodes
    student = torch.randn(11, 3, dtype=torch.float64)
    teacher = torch.randn(11, 5, dtype=torch.float64)  # widths differ: no projection
    params = LSPParams(kernel=kernel, kernel_as_logit=as_logit, l1_scale=2.0, rbf_gamma=0.3)
    value = local_structure_kl(graph, student, teacher, params)
    assert value.item() == pytest.approx(_reference(graph, student, teacher, params), rel=1e-9)


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradient_matches_finite_differences(kernel):
    torch.manual_seed(2)
    graph = dgl.rand_graph(6, 14)
    student = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, 4, dtype=torch.float64)
    params = LSPParams(kernel=kernel, l1_scale=1.5)
    loss = lambda s: local_structure_kl(graph, s, teacher, params)  # noqa: E731
    assert torch.autograd.gradcheck(loss, (student,))


@pytest.mark.parametrize("kernel", KERNELS)
def test_zero_in_degree_nodes_give_no_nan(kernel):
    graph = _graph([0, 1], [1, 0], 5)  # nodes 2..4 have no in-edges
    student = torch.randn(5, 4, requires_grad=True)
    method = _lsp(kernel=kernel)
    loss = method(_knowledge(student), _knowledge(torch.randn(5, 4)), graph=graph)["lsp"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    empty = _graph([], [], 4)
    student = torch.randn(4, 4, requires_grad=True)
    loss = method(_knowledge(student), _knowledge(torch.randn(4, 4)), graph=empty)["lsp"]
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(student.grad, torch.zeros(4, 4))


def test_far_apart_features_do_not_underflow_to_nan():
    graph = _graph([1, 2], [0, 0], 3)
    student = torch.tensor([[0.0], [1e4], [0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0], [0.0], [1e4]])
    # the log-domain kernel (as a logit, exp(−γ·1e8) is 0 for both and the KL vanishes)
    method = _lsp(kernel="rbf", kernel_as_logit=False)
    loss = method(_knowledge(student), _knowledge(teacher), graph=graph)["lsp"]
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 1e6 and torch.isfinite(student.grad).all()


def test_distill_mask_restricts_the_mean():
    graph = _graph([1, 2, 0], [0, 0, 1], 3)
    s, t = torch.randn(3, 2), torch.randn(3, 2)
    method = _lsp()
    full = method(_knowledge(s), _knowledge(t), graph=graph)["lsp"]
    only0 = method(_knowledge(s), _knowledge(t), graph=graph,
                   distill_mask=torch.tensor([True, False, False]))["lsp"]
    # averaged over all 3 nodes; nodes 1 (one neighbour) and 2 (none) contribute 0
    assert only0.item() == pytest.approx(3 * full.item())


def test_gat_shaped_features_are_flattened():
    graph = dgl.rand_graph(7, 20)
    s, t = torch.randn(7, 2, 3), torch.randn(7, 4, 5)
    value = _lsp()(_knowledge(s), _knowledge(t), graph=graph)["lsp"]
    assert value.item() == pytest.approx(
        local_structure_kl(graph, s.flatten(1), t.flatten(1), LSPParams()).item()
    )


def test_teacher_gets_no_gradient_student_does():
    torch.manual_seed(3)
    graph = dgl.rand_graph(10, 40)
    x = torch.randn(10, 6)
    teacher, student = nn.Linear(6, 8), nn.Linear(6, 4)
    method = dglkd.compose(ce=1.0, kd=1.0, lsp={"kernel": "rbf"}, context=3)  # LSP+KD
    terms = method(
        Knowledge(student(x)[:, :3], {"hidden": student(x)}),
        Knowledge(teacher(x)[:, :3], {"hidden": teacher(x)}),
        graph=graph, labels=torch.arange(10) % 3,
    )
    assert set(terms) == {"ce", "kd", "lsp"}
    loss = sum(terms.values())
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_missing_graph_is_a_one_line_error():
    with pytest.raises(DglkdError, match="needs a graph"):
        _lsp()(_knowledge(torch.randn(3, 2)), _knowledge(torch.randn(3, 2)))


def test_union_knn_graph_on_an_image_batch():
    torch.manual_seed(4)
    student = torch.randn(12, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(12, 6, 2, 2)
    method = _lsp(graph="union_knn", k=3, kernel="cosine")
    loss = method(_knowledge(student), _knowledge(teacher))["lsp"]
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(student.grad).all()
    # the union of both 3-NN graphs (self excluded) gives every node 3 to 6 in-neighbours
    union = union_graph(
        knn_instance_graph(teacher.flatten(1), 3, include_self=False),
        knn_instance_graph(student.detach().flatten(1), 3, include_self=False),
    )
    degrees = union.in_degrees()
    assert degrees.min() >= 3 and degrees.max() <= 6
    params = LSPParams(kernel="cosine")
    assert loss.item() == pytest.approx(local_structure_kl(union, student, teacher, params).item())


def test_bad_kernel_is_a_one_line_error():
    with pytest.raises(DglkdError, match="kernel"):
        _lsp(kernel="gaussian")


@pytest.mark.parametrize("kernel", ["l1", "cosine"])
def test_training_a_student_lowers_the_loss(kernel):
    torch.manual_seed(5)
    graph = dgl.add_self_loop(dgl.rand_graph(40, 200))
    x = torch.randn(40, 8)
    teacher = torch.randn(40, 16)  # a fixed random teacher's features
    student = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 8))
    method = _lsp(kernel=kernel, l1_scale=1.0)
    opt = torch.optim.Adam(student.parameters(), lr=0.01)
    losses = []
    for _ in range(80):
        loss = method(_knowledge(student(x)), _knowledge(teacher), graph=graph)["lsp"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# -- the authors' defaults (issue 10) ---------------------------------------------------------
def test_authors_defaults_match_hand_computation():
    # the graph of test_l1_kernel_matches_hand_computation; defaults: kernel value as logit,
    # mean over all 3 nodes (node 1's single neighbour and node 2's none both give KL 0)
    graph = _graph([1, 2, 0], [0, 0, 1], 3)
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # L1 distances to 0: 1, 2
    student = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])  # L1 distances to 0: 2, 1
    method = _lsp(l1_scale=1.0)
    assert method.params.kernel_as_logit and method.params.average_over == "all"
    terms = method(_knowledge(student), _knowledge(teacher), graph=graph)
    d = math.exp(-1) - math.exp(-2)  # the logit gap exp(−1) − exp(−2)
    a = 1 / (1 + math.exp(-d))
    b = 1 - a
    node0 = a * math.log(a / b) + b * math.log(b / a)
    assert terms["lsp"].item() == pytest.approx(node0 / 3, rel=1e-6)
    only_with = _lsp(l1_scale=1.0, average_over="with_neighbours")
    value = only_with(_knowledge(student), _knowledge(teacher), graph=graph)["lsp"]
    assert value.item() == pytest.approx(node0 / 2, rel=1e-6)


def test_bad_average_over_is_a_one_line_error():
    with pytest.raises(DglkdError, match="average_over"):
        _lsp(average_over="some")


def test_ppi_recipe_config_loads_with_its_schedule():
    from dglkd.config import read_yaml
    from dglkd.methods.recipe import check_recipe

    raw = read_yaml("configs/ppi_gat_lsp.yaml")
    spec = check_recipe(raw["method"])
    assert spec["lsp"].schedule.until == 30 and raw["train"]["epochs"] == 500


# -- union kNN graphs without DGL (issue 26) -------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kernel_as_logit", [True, False])
@pytest.mark.parametrize("average_over,include_self", [("all", False), ("with_neighbours", True)])
def test_union_knn_torch_path_equals_the_dgl_path(kernel, kernel_as_logit, average_over,
                                                  include_self):
    # the same batch through both backends: loss and student gradient to 1e-5
    torch.manual_seed(6)
    # small features: the poly and linear kernels would otherwise make every softmax one-hot
    teacher = 0.3 * torch.randn(40, 6, 2, 2)
    student = 0.3 * torch.randn(40, 3, 4, 4)
    # a duplicated row makes ties, which both paths must break alike
    teacher[7], student[7] = teacher[3], student[3]
    options = dict(graph="union_knn", k=5, kernel=kernel, kernel_as_logit=kernel_as_logit,
                   average_over=average_over, knn_include_self=include_self, l1_scale=10.0)
    results = {}
    for backend in ("dense", "dgl"):
        method = _lsp(graph_backend=backend, **options)
        assert method.dense == (backend == "dense")
        s = student.clone().requires_grad_()
        loss = method(_knowledge(s), _knowledge(teacher))["lsp"]
        loss.backward()
        results[backend] = (loss.detach(), s.grad)
    (dense_loss, dense_grad), (dgl_loss, dgl_grad) = results["dense"], results["dgl"]
    assert dense_loss.item() > 0
    assert torch.allclose(dense_loss, dgl_loss, atol=1e-5, rtol=1e-5)
    assert torch.allclose(dense_grad, dgl_grad, atol=1e-5, rtol=1e-5)


def test_union_knn_defaults_to_the_torch_path():
    assert _lsp(graph="union_knn").dense
    assert not _lsp(graph="union_knn", graph_backend="dgl").dense
    assert not _lsp().dense  # a native graph is a DGLGraph


def test_dense_backend_on_a_native_graph_is_a_one_line_error():
    with pytest.raises(DglkdError, match="graph_backend: 'dense' needs graph 'union_knn'"):
        _lsp(graph_backend="dense")

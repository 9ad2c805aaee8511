"""kNN instance graphs, their dense twin and graph unions (dglkd.graphs)."""
import dgl
import pytest
import torch

from dglkd.errors import DglkdError
from dglkd.graphs import dense_knn_index, knn_instance_graph, mean_aggregate_dense, union_graph


def edge_set(graph: dgl.DGLGraph) -> set[tuple[int, int]]:
    src, dst = graph.edges()
    return set(zip(src.tolist(), dst.tolist()))


def in_neighbours(graph: dgl.DGLGraph, node: int) -> set[int]:
    return set(graph.predecessors(node).tolist())


LINE = torch.tensor([[0.0], [1.0], [2.0], [10.0]])


def test_every_in_degree_is_k_and_edges_point_from_neighbour_to_node():
    graph = knn_instance_graph(LINE, 2, metric="euclidean")
    assert graph.in_degrees().tolist() == [2, 2, 2, 2]
    # 10 is far from everyone: its nearest other point is 2, but it is nobody's neighbour.
    assert in_neighbours(graph, 3) == {3, 2}
    assert (2, 3) in edge_set(graph) and (3, 2) not in edge_set(graph)
    assert graph.out_degrees(3) == 1  # only its own self loop


def test_include_self_off_gives_no_self_loops():
    graph = knn_instance_graph(LINE, 2, metric="euclidean", include_self=False)
    assert graph.in_degrees().tolist() == [2, 2, 2, 2]
    assert not graph.has_edges_between(torch.arange(4), torch.arange(4)).any()
    assert in_neighbours(graph, 0) == {1, 2}


@pytest.mark.parametrize("include_self, degree", [(True, 3), (False, 2)])
def test_batch_smaller_than_k_caps_k(include_self, degree):
    graph = knn_instance_graph(torch.randn(3, 5), 8, include_self=include_self)
    assert graph.in_degrees().tolist() == [degree] * 3
    assert dense_knn_index(torch.randn(3, 5), 8, include_self=include_self).shape == (3, degree)


def test_a_batch_of_one_works():
    graph = knn_instance_graph(torch.randn(1, 4), 8, softmax=True)
    assert edge_set(graph) == {(0, 0)}
    lonely = knn_instance_graph(torch.randn(1, 4), 8, include_self=False)
    assert lonely.num_nodes() == 1 and lonely.num_edges() == 0
    assert torch.equal(mean_aggregate_dense(torch.ones(1, 3), torch.zeros(1, 0, dtype=torch.long)),
                       torch.zeros(1, 3))


def test_duplicates_keep_self_and_break_ties_by_lower_index():
    # Five identical rows (a confident network's softmax) and two others.
    x = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0], [0.1, 1.0]])
    graph = knn_instance_graph(x, 3)
    assert graph.in_degrees().tolist() == [3] * 7
    assert in_neighbours(graph, 4) == {4, 0, 1}
    assert in_neighbours(graph, 0) == {0, 1, 2}
    assert graph.num_edges() == len(edge_set(graph))  # no duplicate edges
    assert in_neighbours(knn_instance_graph(x, 3, include_self=False), 1) == {0, 2, 3}


def test_single_class_batch_all_identical():
    x = torch.ones(6, 4)
    index = dense_knn_index(x, 3)
    assert index.tolist() == [[i, *[j for j in range(6) if j != i][:2]] for i in range(6)]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_same_edges_as_dgl_knn_graph_on_tie_free_input(metric):
    torch.manual_seed(0)
    x = torch.randn(40, 6)
    assert edge_set(knn_instance_graph(x, 5, metric=metric)) == edge_set(
        dgl.knn_graph(x, 5, dist=metric)
    )


def test_dense_index_is_the_graph():
    torch.manual_seed(1)
    x = torch.randn(30, 10)
    index = dense_knn_index(x, 4, softmax=True)
    graph = knn_instance_graph(x, 4, softmax=True)
    expected = {(j, i) for i, row in enumerate(index.tolist()) for j in row}
    assert edge_set(graph) == expected
    assert index[:, 0].tolist() == list(range(30))  # self comes first


def test_softmax_option_compares_softmax_of_rows():
    torch.manual_seed(2)
    x = torch.randn(20, 5) * 3
    assert torch.equal(dense_knn_index(x, 4, softmax=True), dense_knn_index(x.softmax(1), 4))


def test_input_is_detached_and_graph_on_its_device():
    x = torch.randn(10, 3, requires_grad=True)
    graph = knn_instance_graph(x, 3)
    assert graph.device == x.device and graph.idtype == torch.int64


def test_mean_aggregation_matches_dgl_mean_over_in_neighbours():
    torch.manual_seed(3)
    x, z = torch.randn(25, 4), torch.randn(25, 7)
    graph = knn_instance_graph(x, 5)
    graph.ndata["z"] = z
    graph.update_all(dgl.function.copy_u("z", "m"), dgl.function.mean("m", "z"))
    dense = mean_aggregate_dense(z, dense_knn_index(x, 5))
    assert torch.allclose(graph.ndata["z"], dense, atol=1e-6)


def test_segments_build_separate_graphs_with_their_own_cap():
    torch.manual_seed(4)
    graph = knn_instance_graph(torch.randn(9, 3), 4, segments=[2, 7])
    assert graph.batch_size == 2
    assert graph.batch_num_nodes().tolist() == [2, 7]
    assert graph.batch_num_edges().tolist() == [4, 28]
    assert graph.in_degrees().tolist() == [2, 2] + [4] * 7
    src, dst = graph.edges()
    assert torch.equal(src < 2, dst < 2)  # no edge crosses segments
    first, second = dgl.unbatch(graph)
    assert first.num_edges() == 4 and second.num_edges() == 28


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metric": "manhattan"}, "metric"),
        ({"k": 0}, "k:"),
        ({"segments": [2, 2]}, "segments"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs, message):
    options = {"k": 3, **kwargs}
    with pytest.raises(DglkdError, match=message) as info:
        knn_instance_graph(torch.randn(5, 2), **options)
    assert "\n" not in str(info.value)


def test_union_graph_merges_without_duplicates():
    g1 = dgl.graph(([0, 1, 2], [1, 2, 0]), num_nodes=4)
    g2 = dgl.graph(([1, 2, 3, 3], [2, 1, 3, 3]), num_nodes=4)
    union = union_graph(g1, g2)
    assert union.num_nodes() == 4
    assert edge_set(union) == {(0, 1), (1, 2), (2, 0), (2, 1), (3, 3)}
    assert union.num_edges() == 5
    assert union.edges()[1].tolist() == sorted(union.edges()[1].tolist())


def test_union_of_knn_graphs_has_both_neighbourhoods():
    torch.manual_seed(5)
    g1 = knn_instance_graph(torch.randn(12, 3), 3)
    g2 = knn_instance_graph(torch.randn(12, 3), 3)
    union = union_graph(g1, g2)
    assert edge_set(union) == edge_set(g1) | edge_set(g2)
    assert (union.in_degrees() >= 3).all() and (union.in_degrees() <= 6).all()


def test_union_keeps_a_shared_batch_structure():
    torch.manual_seed(6)
    g1 = knn_instance_graph(torch.randn(7, 3), 2, segments=[3, 4])
    g2 = knn_instance_graph(torch.randn(7, 3), 2, segments=[3, 4])
    union = union_graph(g1, g2)
    assert union.batch_num_nodes().tolist() == [3, 4]
    assert union.batch_num_edges().sum().item() == union.num_edges()
    assert [g.num_edges() for g in dgl.unbatch(union)] == union.batch_num_edges().tolist()


def test_union_of_graphs_over_different_nodes_is_an_error():
    with pytest.raises(DglkdError, match="same nodes"):
        union_graph(dgl.graph(([0], [1]), num_nodes=2), dgl.graph(([0], [1]), num_nodes=3))

"""GNNs on sampled blocks and layer-wise inference reproduce the full-graph forward."""
from __future__ import annotations

import dgl
import pytest
import torch
import torch.nn.functional as F

from dglkd.errors import DglkdError
from dglkd.models import FeatureTap
from dglkd.engine.inference import layerwise_inference
from dglkd.models.gnn import attach_out_degrees, gat, gcn, mlp, sage

BUILDERS = {"gcn": gcn, "sage": sage, "gat": gat}
NUM_NODES, IN_DIM, CLASSES = 300, 12, 5
SEEDS = torch.tensor([0, 7, 42, 99, 150, 233, 299])


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: threads only add overhead on a two-core machine."""


def _graph(self_loops: bool = True) -> dgl.DGLGraph:
    """A directed random graph: out-degrees differ from in-degrees, as GCN must handle."""
    torch.manual_seed(0)
    dgl.seed(0)  # rand_graph draws from DGL's own generator, which earlier tests move
    graph = dgl.rand_graph(NUM_NODES, 1500)
    if self_loops:
        graph = dgl.add_self_loop(dgl.remove_self_loop(graph))
    graph.ndata["feat"] = torch.randn(NUM_NODES, IN_DIM)
    return attach_out_degrees(graph)


def _model(name: str, layers: int, norm: str) -> torch.nn.Module:
    torch.manual_seed(1)
    model = BUILDERS[name](CLASSES, IN_DIM, hidden=6, layers=layers, norm=norm)
    for bn in model.norms:
        if isinstance(bn, torch.nn.BatchNorm1d):  # running statistics that are not 0 and 1
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return model.eval()


def _blocks(graph: dgl.DGLGraph, seeds: torch.Tensor, fanouts: list[int]):
    sampler = dgl.dataloading.NeighborSampler(fanouts)
    loader = dgl.dataloading.DataLoader(graph, seeds.to(graph.idtype), sampler,
                                        batch_size=len(seeds))
    return next(iter(loader))


CASES = [(name, layers, norm) for name in BUILDERS for layers in (2, 3)
         for norm in ("none", "batch")]


@pytest.mark.parametrize("name,layers,norm", CASES)
def test_blocks_with_full_fanout_match_the_whole_graph(name, layers, norm):
    graph, model = _graph(), _model(name, layers, norm)
    with torch.no_grad(), FeatureTap(model, ["hidden"]) as tap:
        full = model(graph, graph.ndata["feat"])
        full_hidden = tap.pop()["hidden"]
        input_nodes, output_nodes, blocks = _blocks(graph, SEEDS, [-1] * layers)
        assert len(blocks) == layers and torch.equal(output_nodes, SEEDS)
        sampled = model(blocks, blocks[0].srcdata["feat"])
        sampled_hidden = tap.pop()["hidden"]
    assert sampled.shape == (len(SEEDS), CLASSES)
    torch.testing.assert_close(sampled, full[SEEDS], atol=1e-5, rtol=1e-5)
    # The tapped layer's output holds its block's destination nodes; seeds come first.
    assert sampled_hidden.shape[0] == blocks[-2].num_dst_nodes()
    torch.testing.assert_close(sampled_hidden[:len(SEEDS)], full_hidden[SEEDS],
                               atol=1e-5, rtol=1e-5)


def test_gcn_blocks_handle_zero_in_degree_nodes():
    graph, model = _graph(self_loops=False), _model("gcn", 2, "none")
    # Three nodes without in-edges whatever the random graph drew (DGL's generator
    # depends on its thread count); their out-edges stay, so they still feed others.
    sinks = torch.tensor([3, 17, 120])
    graph = attach_out_degrees(dgl.remove_edges(graph, graph.in_edges(sinks, form="eid")))
    assert (graph.in_degrees()[sinks] == 0).all()
    seeds = torch.cat([SEEDS, sinks])
    with torch.no_grad():
        full = model(graph, graph.ndata["feat"])
        _, _, blocks = _blocks(graph, seeds, [-1, -1])
        torch.testing.assert_close(model(blocks, blocks[0].srcdata["feat"]), full[seeds],
                                   atol=1e-5, rtol=1e-5)


def test_gcn_blocks_without_whole_graph_degrees_are_an_error():
    graph = _graph()
    del graph.ndata["_out_degree"]
    _, _, blocks = _blocks(graph, SEEDS, [-1, -1])
    with pytest.raises(DglkdError, match="attach_out_degrees"):
        _model("gcn", 2, "none")(blocks, blocks[0].srcdata["feat"])


def test_wrong_number_of_blocks_is_an_error_naming_both_counts():
    graph, model = _graph(), _model("sage", 3, "none")
    _, _, blocks = _blocks(graph, SEEDS, [-1, -1])
    with pytest.raises(DglkdError, match=r"got 2 blocks .* 3 layers"):
        model(blocks, blocks[0].srcdata["feat"])


def test_mlp_ignores_none_graph_and_blocks():
    graph, model = _graph(), mlp(CLASSES, IN_DIM, hidden=6, layers=2).eval()
    _, _, blocks = _blocks(graph, SEEDS, [-1, -1])
    feat = graph.ndata["feat"][SEEDS]
    with torch.no_grad():
        expected = model(None, feat)
        assert torch.equal(model(blocks, feat), expected)
        assert torch.equal(model(graph, feat), expected)


@pytest.mark.parametrize("name,layers,norm", CASES)
def test_layerwise_inference_matches_the_whole_graph(name, layers, norm):
    graph, model = _graph(), _model(name, layers, norm)
    model.train()  # layer-wise inference switches to eval itself and restores the mode
    with FeatureTap(model, ["hidden"]) as tap, torch.no_grad():
        model.eval()
        full = model(graph, graph.ndata["feat"])
        full_hidden = tap.pop()["hidden"].flatten(1)  # one row per node (GAT: the heads')
        model.train()
    logits, features = layerwise_inference(model, graph, graph.ndata["feat"], batch_size=64,
                                           names=["hidden", "logits"], progress=True)
    assert model.training and all(m.training for m in model.modules())
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)
    assert features["hidden"].shape == full_hidden.shape
    torch.testing.assert_close(features["hidden"], full_hidden, atol=1e-5, rtol=1e-5)
    assert not features["hidden"].requires_grad
    # A layer path names the same feature as its alias.
    hidden_path = model.feature_aliases["hidden"]
    plain, more = layerwise_inference(model, graph, graph.ndata["feat"], 64,
                                      names=[hidden_path])
    torch.testing.assert_close(plain, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(more[hidden_path], full_hidden, atol=1e-5, rtol=1e-5)


def test_layerwise_inference_leaves_the_graph_untouched():
    graph, model = _graph(), _model("gcn", 2, "none")
    del graph.ndata["_out_degree"]
    keys = set(graph.ndata.keys())
    layerwise_inference(model, graph, graph.ndata["feat"], 100)
    assert set(graph.ndata.keys()) == keys


def test_layerwise_inference_of_an_mlp_batches_rows():
    model = mlp(CLASSES, IN_DIM, hidden=6, layers=3, norm="batch").eval()
    feat = torch.randn(130, IN_DIM)
    with torch.no_grad(), FeatureTap(model, ["hidden"]) as tap:
        expected = model(None, feat)
        hidden = tap.pop()["hidden"]
    logits, features = layerwise_inference(model, None, feat, 32, names=("hidden",))
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(features["hidden"], hidden, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size"),
    ({"names": ["norms.0"]}, "'norms.0' is not a layer output"),
    ({"feat": torch.randn(10, IN_DIM)}, "graph: layer-wise inference needs the whole graph"),
    ({"graph": None}, "needs a graph, got None"),
])
def test_layerwise_inference_bad_input(kwargs, message):
    graph = _graph()
    args = {"model": _model("sage", 2, "none"), "graph": graph, "feat": graph.ndata["feat"],
            "batch_size": 64, **kwargs}
    with pytest.raises(DglkdError, match=message):
        layerwise_inference(**args)


def test_sage_trains_on_sampled_cora_blocks(planetoid_root):
    from dglkd.data.planetoid import load_planetoid

    graph = load_planetoid("cora", planetoid_root).graph
    feat, labels = graph.ndata["feat"], graph.ndata["label"]
    train_ids = torch.nonzero(graph.ndata["train_mask"])[:, 0].to(graph.idtype)
    torch.manual_seed(0)
    model = sage(int(labels.max()) + 1, feat.shape[1], hidden=32, layers=2, dropout=0.2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = dgl.dataloading.DataLoader(graph, train_ids, dgl.dataloading.NeighborSampler(
        [10, 10]), batch_size=32, shuffle=True)

    def train_loss() -> float:
        logits, _ = layerwise_inference(model, graph, feat, 1024)
        return F.cross_entropy(logits[train_ids.long()], labels[train_ids.long()]).item()

    before = train_loss()
    epoch_losses = []
    for _ in range(3):
        model.train()
        losses = []
        for _, output_nodes, blocks in loader:
            loss = F.cross_entropy(model(blocks, blocks[0].srcdata["feat"]),
                                   blocks[-1].dstdata["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epoch_losses.append(sum(losses) / len(losses))
    after = train_loss()
    assert epoch_losses[-1] < epoch_losses[0]
    assert after < before - 0.3, (before, after)


def test_building_a_model_leaves_the_random_stream_alone():
    from dglkd.models import build_model

    torch.manual_seed(0)
    checked = build_model("gcn", CLASSES, IN_DIM, hidden=6)
    torch.manual_seed(0)
    direct = gcn(CLASSES, IN_DIM, hidden=6)
    assert all(torch.equal(a, b) for a, b in zip(checked.state_dict().values(),
                                                 direct.state_dict().values()))


@pytest.mark.parametrize("name,options", [("gcn", {"hidden": 65536, "layers": 60}),
                                          ("gat", {"hidden": 4096, "heads": 64}),
                                          ("mlp", {"hidden": 65536, "layers": 64})])
def test_a_model_too_large_for_this_machine_is_refused_before_allocating(name, options):
    from dglkd.models import build_model

    with pytest.raises(DglkdError, match=r"^student: training about [\d,]+ parameters needs "
                                         r"about [\d,]+ GiB, more than this machine's"):
        build_model(name, CLASSES, 1433, key="student", **options)

"""The graph datasets layer: bundled Planetoid and npz graphs, splits, OGB's layout,
and user graphs (the synthetic graphs: test_ogb_like.py). Nothing here touches the network."""
from __future__ import annotations

import os
import sys
import urllib.error

os.environ.setdefault("DGLBACKEND", "pytorch")

import dgl  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

from dglkd.data import npz as npz_mod  # noqa: E402
from dglkd.data.npz import load_npz  # noqa: E402
from dglkd.data.ogb import load_ogb  # noqa: E402
from dglkd.data.planetoid import dgl_raw_path, load_planetoid  # noqa: E402
from dglkd.data.splits import largest_connected_component, make_inductive, per_class_split  # noqa: E402
from dglkd.data.task import GraphTask, accuracy  # noqa: E402
from dglkd.data.user import from_dgl_graph, load_graph_file  # noqa: E402
from dglkd.errors import DglkdError  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from ogb_layout import write_tiny_ogb  # noqa: E402

# ogb's import checks PyPI for a newer ogb in a thread; offline that only warns.
pytestmark = pytest.mark.filterwarnings("ignore:Failed to check for latest version")

CORA_NPZ = os.path.join(os.path.dirname(npz_mod.__file__), "bundled", "npz", "cora.npz")


def assert_graph_task(task: GraphTask) -> None:
    """The shape every graph loader promises."""
    g = task.graph
    assert g.ndata["feat"].dtype == torch.float32 and g.ndata["feat"].dim() == 2
    assert g.ndata["label"].dtype == torch.int64 and g.ndata["label"].shape == (g.num_nodes(),)
    for split in ("train", "val", "test"):
        assert task.mask(split).dtype == torch.bool
    assert not (task.mask("train") & task.mask("val")).any()
    assert not (task.mask("train") & task.mask("test")).any()
    assert not (task.mask("val") & task.mask("test")).any()


def assert_symmetric_no_self_loops(g) -> None:
    src, dst = g.edges()
    assert not bool((src == dst).any())
    assert bool(g.has_edges_between(dst, src).all())


@pytest.fixture
def offline_dgl(monkeypatch):
    """Any attempt by DGL to download fails the test."""

    def no_download(*args, **kwargs):
        raise AssertionError(f"DGL tried to download {args}")

    monkeypatch.setattr("dgl.data.dgl_dataset.download", no_download)


# ---------------------------------------------------------------- Planetoid


def test_cora_public_split_from_bundle(tmp_path, monkeypatch, offline_dgl):
    monkeypatch.setenv("HOME", str(tmp_path))  # default cache: a fresh ~/.cache/dglkd
    task = load_planetoid("cora")
    assert_graph_task(task)
    g = task.graph
    assert g.num_nodes() == 2708 and task.num_classes == 7 and task.num_features == 1433
    assert task.split_sizes() == {"train": 140, "val": 500, "test": 1000}
    assert g.num_edges() == 10556
    assert_symmetric_no_self_loops(g)
    # Our idea of DGL's raw folder is DGL's own; the second load reads DGL's cache.
    expected = dgl_raw_path("cora_v2", str(tmp_path / ".cache" / "dglkd" / "planetoid"))
    assert task.info["dgl_raw_path"] == expected
    assert os.path.exists(os.path.join(expected, "cora_v2_dgl_graph.bin"))
    again = load_planetoid("Cora")
    assert again.graph.num_edges() == 10556 and again.split_sizes() == task.split_sizes()


def test_citeseer_from_bundle_in_given_root(tmp_path, offline_dgl, capsys):
    task = load_planetoid("citeseer", root=str(tmp_path / "cache"))
    assert_graph_task(task)
    assert task.graph.num_nodes() == 3327 and task.num_classes == 6 and task.num_features == 3703
    assert task.split_sizes() == {"train": 120, "val": 500, "test": 1000}
    assert_symmetric_no_self_loops(task.graph)
    assert task.info["dgl_raw_path"].startswith(str(tmp_path / "cache"))
    assert capsys.readouterr().out == ""  # DGL's progress output is silenced
    assert not [p for p in os.listdir(tmp_path / "cache") if p.startswith(".staging")]


def test_planetoid_layout_mismatch_is_one_line(tmp_path, monkeypatch, offline_dgl):
    # Should DGL ever look elsewhere, the user hears where the files were staged.
    monkeypatch.setattr("dglkd.data.planetoid.dgl_raw_path", lambda name, raw_dir: os.path.join(raw_dir, "elsewhere"))
    with pytest.raises(DglkdError, match=r"did not find the cora raw files staged in .*elsewhere") as err:
        load_planetoid("cora", root=str(tmp_path))
    assert "\n" not in str(err.value)


def test_planetoid_binary_features_are_the_word_indicators(tmp_path, offline_dgl):
    normalized = load_planetoid("cora", root=str(tmp_path)).graph.ndata["feat"]
    binary = load_planetoid("cora", root=str(tmp_path), features="binary").graph.ndata["feat"]
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    words = binary.sum(1, keepdim=True)
    # DGL divides each row by its word count: undoing that gives DGL's features back
    torch.testing.assert_close(binary / words, normalized)
    assert 18.0 < words.mean().item() < 18.3  # Cora's documented 18.2 words per paper
    with pytest.raises(DglkdError, match=r"features: unknown 'tfidf'; allowed: normalized, binary"):
        load_planetoid("cora", root=str(tmp_path), features="tfidf")


def test_planetoid_unknown_name():
    with pytest.raises(DglkdError, match=r"'pubmedx'.*allowed: cora, citeseer"):
        load_planetoid("pubmedx")


# ---------------------------------------------------------------- npz


def test_cora_npz_lcc_and_per_class_split():
    task = load_npz(CORA_NPZ)
    assert_graph_task(task)
    g = task.graph
    assert g.num_nodes() == 2485 and task.num_classes == 7  # GLNN's Cora
    assert g.num_edges() == 2 * 5069
    assert_symmetric_no_self_loops(g)
    assert task.split_sizes() == {"train": 140, "val": 210, "test": 2485 - 350}
    labels = g.ndata["label"]
    assert torch.bincount(labels[task.mask("train")]).tolist() == [20] * 7
    assert torch.bincount(labels[task.mask("val")]).tolist() == [30] * 7
    assert len(largest_connected_component(g)) == g.num_nodes()


def test_npz_split_is_seeded():
    a, b, c = (load_npz(CORA_NPZ, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.mask("train"), b.mask("train")) and torch.equal(a.mask("val"), b.mask("val"))
    assert not torch.equal(a.mask("train"), c.mask("train"))
    full = load_npz(CORA_NPZ, lcc=False, train_per_class=5, val_per_class=10)
    assert full.graph.num_nodes() == 2708 and full.split_sizes()["train"] == 35


def _write_npz(path, dense_adj: np.ndarray, labels: np.ndarray, drop: str | None = None) -> None:
    """A small npz graph in the GLNN layout (features: one-hot node ids)."""
    adj = sp.csr_matrix(dense_adj.astype(np.float32))
    attr = sp.csr_matrix(np.eye(len(labels), dtype=np.float32))
    arrays = {"labels": labels}
    for prefix, m in (("adj", adj), ("attr", attr)):
        arrays.update({f"{prefix}_data": m.data, f"{prefix}_indices": m.indices,
                       f"{prefix}_indptr": m.indptr, f"{prefix}_shape": np.array(m.shape)})
    arrays.pop(drop, None)
    np.savez(path, **arrays)


def test_npz_small_graph_symmetrised_and_lcc(tmp_path):
    # Nodes 0-5: a directed path with a self loop; nodes 6-7: a separate edge.
    adj = np.zeros((8, 8))
    for i in range(5):
        adj[i, i + 1] = 1
    adj[2, 2] = adj[6, 7] = 1
    path = tmp_path / "small.npz"
    _write_npz(path, adj, np.array([0, 1, 0, 1, 0, 1, 0, 1]))
    task = load_npz(str(path), train_per_class=1, val_per_class=1)
    assert task.graph.num_nodes() == 6 and task.graph.num_edges() == 10
    assert_symmetric_no_self_loops(task.graph)
    assert task.split_sizes() == {"train": 2, "val": 2, "test": 2}
    assert load_npz(str(path), lcc=False, train_per_class=1, val_per_class=1).graph.num_nodes() == 8


def test_npz_errors_name_the_file_and_key(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(DglkdError, match="not found: .*nope.npz"):
        load_npz(str(missing))
    path = tmp_path / "nolabels.npz"
    _write_npz(path, np.eye(4, k=1), np.zeros(4, dtype=int), drop="labels")
    with pytest.raises(DglkdError, match=r"'labels' missing; keys present: adj_data") as err:
        load_npz(str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(DglkdError, match="split='random'.*allowed: per_class"):
        load_npz(CORA_NPZ, split="random")
    with pytest.raises(DglkdError, match=r"class \d+ has \d+ nodes, fewer than .* = 1030"):
        load_npz(CORA_NPZ, train_per_class=1000)


# ---------------------------------------------------------------- splits


def test_per_class_split_and_lcc_helpers():
    labels = torch.tensor([0] * 10 + [1] * 12 + [2] * 8)
    idx = per_class_split(labels, 3, 2, seed=4)
    assert [len(idx[k]) for k in ("train", "val", "test")] == [9, 6, 15]
    everything = torch.cat(list(idx.values()))
    assert sorted(everything.tolist()) == list(range(30))
    with pytest.raises(DglkdError, match="class 2 has 8 nodes"):
        per_class_split(labels, 5, 4, seed=0)
    g = dgl.graph((torch.tensor([0, 1, 3, 5]), torch.tensor([1, 2, 4, 6])), num_nodes=8)
    assert largest_connected_component(g).tolist() == [0, 1, 2]


def test_make_inductive_hides_a_share_of_test_nodes():
    task = load_npz(CORA_NPZ)
    ind = make_inductive(task, hidden_test_share=0.2, seed=0)
    test = task.mask("test")
    hidden, observed = ind.mask("test"), ind.observed_mask
    assert int(hidden.sum()) == round(0.2 * int(test.sum()))
    assert bool((hidden <= test).all())  # hidden nodes are test nodes
    assert torch.equal(observed, ~hidden)
    assert bool(observed[task.mask("train") | task.mask("val")].all())
    assert torch.equal(ind.graph.ndata["observed_test_mask"], test & ~hidden)
    assert ind.graph.num_nodes() == task.graph.num_nodes()  # the full graph stays
    assert torch.equal(task.mask("test"), test) and task.observed_mask is None  # input untouched
    assert torch.equal(make_inductive(task, 0.2, seed=0).mask("test"), hidden)
    assert not torch.equal(make_inductive(task, 0.2, seed=1).mask("test"), hidden)
    with pytest.raises(DglkdError, match="hidden_test_share=1.5"):
        make_inductive(task, 1.5)
    with pytest.raises(DglkdError, match="already inductive"):
        make_inductive(ind)


# ---------------------------------------------------------------- OGB


def test_ogb_layout_as_ogbn_arxiv_through_ogb_loader(tmp_path):
    written = write_tiny_ogb(str(tmp_path / "ogbn_arxiv"), split="time")
    task = load_ogb("ogbn-arxiv", str(tmp_path))
    assert_graph_task(task)
    g = task.graph
    assert g.num_nodes() == 60 and task.num_features == 8 and task.num_classes == 40
    assert g.num_edges() == 2 * len(written["edges"])  # made bidirected
    assert_symmetric_no_self_loops(g)
    assert torch.equal(g.ndata["label"], torch.from_numpy(written["labels"]).long())
    assert torch.allclose(g.ndata["feat"], torch.from_numpy(written["feat"]), atol=1e-5)
    assert torch.nonzero(task.mask("val")).view(-1).tolist() == sorted(written["split"]["valid"].tolist())
    # The metric is ogb's Evaluator("ogbn-arxiv") on predicted classes.
    pred = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(0))
    labels = g.ndata["label"]
    assert task.metric is not accuracy
    assert task.metric(pred, labels) == pytest.approx(accuracy(pred, labels))


def test_ogb_custom_meta_dict(tmp_path):
    written = write_tiny_ogb(str(tmp_path / "mine"), num_nodes=45, num_classes=5)
    meta = dict(written["meta_dict"], dir_path="mine")  # relative: under root
    task = load_ogb("ogbn-mine", str(tmp_path), meta_dict=meta)
    assert task.graph.num_nodes() == 45 and task.num_classes == 5
    assert task.metric is accuracy  # ogb's Evaluator knows only its own names
    assert sum(task.split_sizes().values()) == 45
    again = load_ogb("ogbn-mine", str(tmp_path), meta_dict=meta)  # from ogb's processed file
    assert again.graph.num_edges() == task.graph.num_edges()
    with pytest.raises(DglkdError, match=r"absent.raw.edge.csv.gz not found and meta_dict has no 'url'"):
        load_ogb("ogbn-mine", str(tmp_path), meta_dict=dict(meta, dir_path="absent"))
    bad = dict(meta)
    bad.pop("split")
    with pytest.raises(DglkdError, match="lacks key 'split'"):
        load_ogb("ogbn-mine", str(tmp_path), meta_dict=bad)


def test_ogb_offline_error_names_folder_and_url(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("ogb.utils.url.ur.urlopen", offline)
    with pytest.raises(DglkdError) as err:
        load_ogb("ogbn-arxiv", str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "offline?" in msg
    assert str(tmp_path / "ogbn_arxiv") in msg and "arxiv.zip" in msg


def test_ogb_large_download_never_waits_for_input(tmp_path, monkeypatch):
    class Big:
        def info(self):
            return {"Content-Length": str(3 << 30)}

    monkeypatch.setattr("ogb.utils.url.ur.urlopen", lambda url: Big())
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # not a terminal
    with pytest.raises(DglkdError, match=r"3.00GB download needs a yes.*products.zip"):
        load_ogb("ogbn-products", str(tmp_path))


def test_ogb_folder_without_release_file_and_bad_names(tmp_path):
    (tmp_path / "ogbn_arxiv").mkdir()
    with pytest.raises(DglkdError, match="lacks RELEASE_v1.txt"):
        load_ogb("ogbn-arxiv", str(tmp_path))
    with pytest.raises(DglkdError, match="'ogbn-nope' unknown; allowed: .*ogbn-arxiv"):
        load_ogb("ogbn-nope", str(tmp_path))
    with pytest.raises(DglkdError, match="'rocauc'"):
        load_ogb("ogbn-proteins", str(tmp_path))


# ---------------------------------------------------------------- user graphs


def _user_graph():
    g = dgl.graph((torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 0])))
    g.ndata["feat"] = torch.arange(8, dtype=torch.float64).view(4, 2)
    g.ndata["label"] = torch.tensor([0, 1, 0, 2])
    g.ndata["train_mask"] = torch.tensor([1, 1, 0, 0])
    g.ndata["val_mask"] = torch.tensor([False, False, True, False])
    g.ndata["test_mask"] = torch.tensor([False, False, False, True])
    return g


def test_user_graph_is_checked_and_converted():
    g = _user_graph()
    task = from_dgl_graph(g, name="mine")
    assert_graph_task(task)
    assert task.num_classes == 3 and task.split_sizes() == {"train": 2, "val": 1, "test": 1}
    assert g.ndata["feat"].dtype == torch.float64  # the caller's graph is untouched
    assert from_dgl_graph(g, num_classes=5).num_classes == 5


@pytest.mark.parametrize("key", ["feat", "label", "train_mask", "val_mask", "test_mask"])
def test_user_graph_missing_ndata_names_the_key(key):
    g = _user_graph()
    g.ndata.pop(key)
    with pytest.raises(DglkdError, match=rf"ndata\['{key}'\] missing") as err:
        from_dgl_graph(g)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("feat", torch.zeros(4), r"ndata\['feat'\] has shape \(4,\)"),
        ("label", torch.zeros(4), r"ndata\['label'\] has shape \(4,\) and dtype torch.float32"),
        ("train_mask", torch.tensor([0, 2, 0, 0]), r"ndata\['train_mask'\] must be a bool"),
        ("train_mask", torch.zeros(4, dtype=torch.bool), r"ndata\['train_mask'\] selects no node"),
    ],
)
def test_user_graph_bad_ndata_names_the_key(key, value, message):
    g = _user_graph()
    g.ndata[key] = value
    with pytest.raises(DglkdError, match=message):
        from_dgl_graph(g)


def test_user_graph_other_errors():
    with pytest.raises(DglkdError, match="num_classes=2"):
        from_dgl_graph(_user_graph(), num_classes=2)
    with pytest.raises(DglkdError, match="expected a dgl.DGLGraph"):
        from_dgl_graph("not a graph")  # type: ignore[arg-type]


def test_graph_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "g.bin"
    dgl.save_graphs(str(path), [_user_graph()])
    task = load_graph_file(str(path))
    assert task.name == "g" and task.graph.num_nodes() == 4 and task.num_classes == 3
    with pytest.raises(DglkdError, match="graph file not found: .*missing.bin"):
        load_graph_file(str(tmp_path / "missing.bin"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a graph")
    with pytest.raises(DglkdError, match="junk.bin: not a file written by dgl.save_graphs"):
        load_graph_file(str(junk))

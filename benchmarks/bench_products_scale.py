"""Neighbour-sampled training and GLNN distillation at ogbn-products' size on this machine (CPU).

The graph is the synthetic one with ogbn-products' shape (2,449,029 nodes, 61,859,140
undirected edges stored both ways, 100 features, 47 classes; see
``dglkd.data.synthetic.PRODUCTS_SHAPE``), loaded from ``--graph`` or generated (about 90 s)
and saved there when the file is absent. Each role runs in its own process, one after the
other, so its peak resident memory (``ru_maxrss``) is its own:

* ``teacher``: SAGE 3×256 trained on blocks from ``NeighborSampler([15, 10, 5])``, seed
  batches of 1,024, through dglkd's engine (``minibatches`` + ``train_step``, objective
  ``compose(ce=1.0)``); ``--batches`` timed batches (an epoch is 192) split into sampling
  (waiting for the loader's next batch) and compute (the step); then the layer-wise
  inference over every node (batches of 4,096) written straight into a float16
  ``SoftLabelWriter`` memmap. Loads the graph, kept in CSR + CSC only (its COO copy
  dropped: DGL's sampling reads CSC, ``out_degrees`` and ``node_subgraph`` read CSR).
* ``student``: a GLNN MLP (3 layers, ``--mlp-width``, default 2048 as GLNN's products
  recipe) trained with ``compose(glnn=1.0)`` (λ = 0: KL to the teacher only) on shuffled
  batches of 4,096 of all nodes, each reading its feature rows and its soft-label rows from
  the teacher's memmap (``open_soft_labels``). Loads no graph: only the feature matrix
  (and, for the validation accuracy printed as a sanity check, labels and val ids), saved
  as ``.npy`` by the teacher role.
* ``latency``: for the same 1,024 random target nodes, the SAGE gathering its full 3-hop
  in-neighbourhood (``MultiLayerFullNeighborSampler(3)`` blocks, computing only the rows
  needed) and its training fan-outs (``NeighborSampler([15, 10, 5])`` blocks), sampling and
  feature gathering included, against the MLP reading those nodes' features only; median
  ms by ``dglkd.engine.step.median_ms``. Loads the graph (CSC only, 32-bit IDs) and both models.

Prints one table (per role: seconds per 100 batches, sampling / compute; peak RSS in GB,
goal ≤ 12 GB each, the graph counted), the layer-wise inference's seconds and nodes/s, the
latencies and the MLP-vs-SAGE ratio (goal ≥ 150×; GLNN reports 146×–273×), and writes the
same numbers as JSON to ``--json FILE`` if given.

    DGLBACKEND=pytorch python benchmarks/bench_products_scale.py [--batches 100] \\
        [--graph /tmp/kd/products.bin] [--mlp-width 2048] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DGLBACKEND", "pytorch")

ROLES = ("teacher", "student", "latency")
TEACHER = {"hidden": 256, "layers": 3, "dropout": 0.5}
FANOUTS = [15, 10, 5]
TEACHER_BATCH = 1024
STUDENT_BATCH = 4096
INFERENCE_BATCH = 4096
WARMUP_BATCHES = 3
LATENCY_NODES = 1024


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _peak_gb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _threads(count: int) -> None:
    import torch
    from dgl.utils import set_num_threads

    torch.set_num_threads(count)
    set_num_threads(count)


def _timed_steps(role: str, epoch, model, objective, optimizer,
                 count: int) -> tuple[list[float], list[float], list[float]]:
    """``count`` training steps after ``WARMUP_BATCHES``, each timed in two parts: waiting
    for the next batch (sampling) and the step itself (compute); epochs restart as needed."""
    from dglkd.engine.step import train_step

    model.train()
    objective.train()
    sampling, compute, losses = [], [], []
    batches = iter(epoch())
    for i in range(WARMUP_BATCHES + count):
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:  # a new epoch
            batches = iter(epoch())
            batch = next(batches)
        t1 = time.perf_counter()
        loss = float(train_step(batch, model, objective, optimizer, None)["total"])
        t2 = time.perf_counter()
        if i >= WARMUP_BATCHES:
            sampling.append(t1 - t0)
            compute.append(t2 - t1)
            losses.append(loss)
        if (i + 1) % 20 == 0:
            _log(f"{role}: batch {i + 1}/{WARMUP_BATCHES + count}, loss {loss:.3f}")
    return sampling, compute, losses


def ensure_graph(path: str) -> dict:
    """Generate the products-shaped graph and save it at ``path`` unless it exists."""
    if os.path.exists(path):
        return {"graph_generated": False}
    import dgl
    import torch

    from dglkd.data.synthetic import PRODUCTS_SHAPE, synthetic_node_graph

    start = time.perf_counter()
    task = synthetic_node_graph(seed=0, **PRODUCTS_SHAPE)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:  # renamed into place only when complete, so a killed run leaves no half file
        dgl.save_graphs(tmp, [task.graph], {"num_classes": torch.tensor([task.num_classes])})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"graph_generated": True, "graph_seconds": time.perf_counter() - start}


def _load_graph(path: str, formats: list[str], int32: bool = False):
    """The saved graph with only ``formats`` materialised (its stored COO is dropped);
    ``int32``: node and edge IDs as 32-bit integers (DGL's ``DGLGraph.int()``)."""
    import dgl

    graphs, _ = dgl.load_graphs(path)
    graph = graphs[0].int() if int32 else graphs[0]
    graph = graph.formats(formats)
    del graphs
    for split in ("train", "val", "test"):  # saved as uint8; indexing wants bool masks
        key = f"{split}_mask"
        if key in graph.ndata:
            graph.ndata[key] = graph.ndata[key].bool()
    return graph


def role_teacher(args: argparse.Namespace, work: Path) -> dict:
    import numpy as np
    import torch

    from dglkd.config import TrainConfig
    from dglkd.data.task import GraphTask
    from dglkd.engine.graph import GraphData, minibatches
    from dglkd.engine.optim import make_optimizer
    from dglkd.engine.softlabels import SoftLabelWriter, open_soft_labels
    from dglkd.methods import compose
    from dglkd.models import build_model
    from dglkd.models.gnn import layerwise_inference

    start = time.perf_counter()
    graph = _load_graph(args.graph, ["csr", "csc"])
    task = GraphTask(name="products-shaped", graph=graph, num_classes=47)
    data = GraphData(task, torch.device("cpu"), self_loop=False)
    load_s, loaded_gb = time.perf_counter() - start, _peak_gb()
    _log(f"teacher: graph loaded in {load_s:.0f} s ({loaded_gb:.1f} GB peak)")
    # What the student may read without the graph (not timed).
    np.save(work / "feat.npy", data.feat.numpy())
    np.save(work / "label.npy", data.labels.numpy())
    np.save(work / "val_ids.npy", torch.nonzero(graph.ndata["val_mask"]).squeeze(1).numpy())

    torch.manual_seed(0)
    model = build_model("sage", 47, 100, **TEACHER)
    cfg = TrainConfig(epochs=1, lr=0.003, batch_size=TEACHER_BATCH, fanouts=FANOUTS,
                      num_workers=0, eval_batch_size=INFERENCE_BATCH)
    objective = compose(ce=1.0, context=47)
    optimizer = make_optimizer(cfg, model.parameters())
    epoch = minibatches(data, model, cfg, None, torch.Generator().manual_seed(0))
    batches_per_epoch = -(-int(data.train_mask.sum()) // TEACHER_BATCH)
    sampling, compute, losses = _timed_steps("teacher", epoch, model, objective, optimizer,
                                             args.batches)
    trained_gb = _peak_gb()

    # Diagnostic: the relational subgraph block_batch builds per batch (compose(ce=1) never
    # reads it), timed alone on fresh seed sets.
    train_ids = torch.nonzero(data.train_mask).squeeze(1)
    import dgl

    gen = torch.Generator().manual_seed(1)
    seed_sets = [train_ids[torch.randperm(len(train_ids), generator=gen)[:TEACHER_BATCH]]
                 for _ in range(10)]
    t0 = time.perf_counter()
    for seeds in seed_sets:
        dgl.node_subgraph(data.train_graph, seeds)
    subgraph_ms = (time.perf_counter() - t0) / len(seed_sets) * 1000

    num_nodes = data.train_graph.num_nodes()
    soft = work / "soft"
    writer = SoftLabelWriter(soft, {"logits": (num_nodes, 47)}, dtype="float16",
                             meta={"model": "sage 3x256", "batches": args.batches})
    _log("teacher: layer-wise inference")
    t0 = time.perf_counter()
    layerwise_inference(model, data.train_graph, data.feat, INFERENCE_BATCH,
                        device=torch.device("cpu"), out=writer.tensor("logits"))
    inference_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    writer.commit()
    commit_s = time.perf_counter() - t0
    stored = open_soft_labels(soft)
    val_ids = torch.nonzero(data.task.graph.ndata["val_mask"]).squeeze(1)
    val_acc = float((stored.rows("logits", val_ids).argmax(1) == data.labels[val_ids])
                    .float().mean())
    torch.save(model.state_dict(), work / "teacher.pt")
    return {"role": "teacher", "model": "SAGE 3x256", "load_s": load_s,
            "loaded_gb": loaded_gb, "trained_gb": trained_gb, "batches": args.batches,
            "batches_per_epoch": batches_per_epoch, "sampling_s": sum(sampling),
            "compute_s": sum(compute), "first_loss": losses[0], "last_loss": losses[-1],
            "node_subgraph_ms": subgraph_ms, "inference_s": inference_s,
            "inference_nodes_per_s": num_nodes / inference_s, "commit_s": commit_s,
            "val_acc": val_acc, "nodes": num_nodes, "edges": data.train_graph.num_edges(),
            "peak_gb": _peak_gb()}


def role_student(args: argparse.Namespace, work: Path) -> dict:
    import numpy as np
    import torch

    from dglkd.config import TrainConfig
    from dglkd.engine.optim import make_optimizer
    from dglkd.engine.softlabels import open_soft_labels
    from dglkd.engine.step import Batch
    from dglkd.methods import Knowledge, compose
    from dglkd.models import build_model

    start = time.perf_counter()
    feat = torch.from_numpy(np.load(work / "feat.npy"))
    labels = torch.from_numpy(np.load(work / "label.npy"))
    val_ids = torch.from_numpy(np.load(work / "val_ids.npy"))
    soft = open_soft_labels(work / "soft")
    load_s, loaded_gb = time.perf_counter() - start, _peak_gb()
    num_nodes = feat.shape[0]

    torch.manual_seed(0)
    model = build_model("mlp", 47, 100, hidden=args.mlp_width, layers=3, dropout=0.2,
                        norm="batch")
    cfg = TrainConfig(epochs=1, lr=0.003, batch_size=STUDENT_BATCH)
    objective = compose(glnn=1.0, context=47)
    optimizer = make_optimizer(cfg, model.parameters())
    generator = torch.Generator().manual_seed(0)

    def epoch():
        # GLNN distils on every node (transductive): shuffled node batches, no graph.
        for ids in torch.randperm(num_nodes, generator=generator).split(STUDENT_BATCH):
            yield Batch((None, feat[ids]), labels=labels[ids], index=ids,
                        teacher=Knowledge(soft.rows("logits", ids)))

    sampling, compute, losses = _timed_steps("student", epoch, model, objective, optimizer,
                                             args.batches)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(None, feat[ids]).argmax(1) for ids in val_ids.split(8192)])
    val_acc = float((pred == labels[val_ids]).float().mean())
    torch.save(model.state_dict(), work / "student.pt")
    return {"role": "student", "model": f"MLP 3x{args.mlp_width}", "load_s": load_s,
            "loaded_gb": loaded_gb, "batches": args.batches,
            "batches_per_epoch": -(-num_nodes // STUDENT_BATCH), "sampling_s": sum(sampling),
            "compute_s": sum(compute), "first_loss": losses[0], "last_loss": losses[-1],
            "val_acc": val_acc, "peak_gb": _peak_gb()}


def role_latency(args: argparse.Namespace, work: Path) -> dict:
    import dgl
    import torch

    from dglkd.engine.step import median_ms
    from dglkd.models import build_model

    start = time.perf_counter()
    # 32-bit IDs (products' 2.45 M nodes and 124 M edges fit) halve the graph's index
    # arrays and those of every block sampled from it: the full 3-hop neighbourhood of
    # 1,024 nodes reaches every node over 85 M edges, and its 64-bit indices took the role
    # over 12 GB. Blocks inherit the graph's ID type; SAGEConv runs on either.
    graph = _load_graph(args.graph, ["csc"], int32=True)
    feat = graph.ndata.pop("feat")
    for key in list(graph.ndata.keys()):  # structure only: blocks copy no node data
        graph.ndata.pop(key)
    load_s, loaded_gb = time.perf_counter() - start, _peak_gb()
    sage = build_model("sage", 47, 100, **TEACHER)
    sage.load_state_dict(torch.load(work / "teacher.pt"))
    mlp = build_model("mlp", 47, 100, hidden=args.mlp_width, layers=3, dropout=0.2,
                      norm="batch")
    mlp.load_state_dict(torch.load(work / "student.pt"))
    sage.eval()
    mlp.eval()
    cpu = torch.device("cpu")
    targets = torch.randperm(graph.num_nodes(), generator=torch.Generator().manual_seed(0))
    targets = targets[:LATENCY_NODES].to(graph.idtype)
    full = dgl.dataloading.MultiLayerFullNeighborSampler(3)
    sampled = dgl.dataloading.NeighborSampler(FANOUTS)
    sizes: dict[str, list] = {}

    def gnn(sampler, name):
        @torch.no_grad()
        def run():
            input_nodes, _, blocks = sampler.sample(graph, targets)
            sizes[name] = [[b.num_src_nodes(), b.num_dst_nodes(), b.num_edges()] for b in blocks]
            return sage(blocks, feat[input_nodes])
        return run

    @torch.no_grad()
    def mlp_run():
        return mlp(None, feat[targets])

    _log("latency: SAGE, full 3-hop neighbourhood")
    full_ms = median_ms(gnn(full, "full"), cpu, repeats=3)
    full_gb = _peak_gb()
    _log("latency: SAGE, fan-outs; MLP")
    sampled_ms = median_ms(gnn(sampled, "fanout"), cpu, repeats=7)
    mlp_ms = median_ms(mlp_run, cpu, repeats=21)
    return {"role": "latency", "load_s": load_s, "loaded_gb": loaded_gb, "full_gb": full_gb,
            "sage_full_ms": full_ms, "sage_fanout_ms": sampled_ms, "mlp_ms": mlp_ms,
            "blocks": sizes, "peak_gb": _peak_gb()}


def run_role(role: str, args: argparse.Namespace, work: Path) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--role", role, "--work", str(work),
               "--graph", args.graph, "--batches", str(args.batches),
               "--mlp-width", str(args.mlp_width), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "DGLBACKEND": "pytorch"}
    start = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"role {role} failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def report(results: dict, args: argparse.Namespace) -> dict:
    teacher, student, latency = (results[r] for r in ROLES)
    per100 = {r: {k: results[r][f"{k}_s"] * 100 / args.batches for k in ("sampling", "compute")}
              for r in ("teacher", "student")}
    summary = {
        "graph": {"nodes": teacher["nodes"], "edges": teacher["edges"], "features": 100,
                  "classes": 47, "file": args.graph,
                  "generated": results["graph"].get("graph_generated", False)},
        "threads": args.threads, "batches": args.batches, "mlp_width": args.mlp_width,
        "seconds_per_100_batches": per100,
        "layerwise_inference": {"seconds": teacher["inference_s"],
                                "nodes_per_s": teacher["inference_nodes_per_s"],
                                "commit_s": teacher["commit_s"]},
        "peak_rss_gb": {r: results[r]["peak_gb"] for r in ROLES},
        "latency_ms": {"sage_full": latency["sage_full_ms"],
                       "sage_fanout": latency["sage_fanout_ms"], "mlp": latency["mlp_ms"]},
        "ratio_full": latency["sage_full_ms"] / latency["mlp_ms"],
        "ratio_fanout": latency["sage_fanout_ms"] / latency["mlp_ms"],
        "roles": results,
    }
    print(f"graph: {teacher['nodes']:,} nodes, {teacher['edges']:,} directed edges "
          f"(products-shaped, {'generated' if summary['graph']['generated'] else 'loaded'}), "
          f"100 features, 47 classes; {args.threads} threads; {args.batches} timed batches "
          f"per role after {WARMUP_BATCHES} warm-up")
    print("| role | model | batch | s/100 batches: sampling | compute | total | val acc | "
          "peak RSS GB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row, batch in ((teacher, TEACHER_BATCH), (student, STUDENT_BATCH)):
        p = per100[row["role"]]
        print(f"| {row['role']} | {row['model']} | {batch:,} | {p['sampling']:.1f} | "
              f"{p['compute']:.1f} | {p['sampling'] + p['compute']:.1f} | "
              f"{row['val_acc']:.3f} | {row['peak_gb']:.2f} |")
    print(f"| latency | SAGE + MLP | {LATENCY_NODES:,} nodes | – | – | – | – | "
          f"{latency['peak_gb']:.2f} |")
    print(f"epochs: teacher {teacher['batches_per_epoch']} batches, student "
          f"{student['batches_per_epoch']} batches; per-batch induced subgraph in block_batch "
          f"{teacher['node_subgraph_ms']:.0f} ms (inside the teacher's sampling time)")
    print(f"layer-wise inference, all {teacher['nodes']:,} nodes (batches of "
          f"{INFERENCE_BATCH:,}, float16 memmap): {teacher['inference_s']:.0f} s, "
          f"{teacher['inference_nodes_per_s']:,.0f} nodes/s (+ {teacher['commit_s']:.1f} s commit)")
    print(f"latency, {LATENCY_NODES:,} nodes (median): SAGE full 3-hop "
          f"{latency['sage_full_ms']:,.0f} ms, SAGE fan-outs {FANOUTS} "
          f"{latency['sage_fanout_ms']:,.1f} ms, MLP {latency['mlp_ms']:.1f} ms → "
          f"MLP {summary['ratio_full']:.0f}× faster than SAGE full (goal ≥ 150×), "
          f"{summary['ratio_fanout']:.1f}× than SAGE with fan-outs")
    print(f"peak RSS GB (goal ≤ 12): teacher {teacher['peak_gb']:.2f} (graph loaded "
          f"{teacher['loaded_gb']:.2f}), student {student['peak_gb']:.2f}, latency "
          f"{latency['peak_gb']:.2f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100, help="timed batches per role")
    parser.add_argument("--graph", help="graph file: loaded, or generated and saved there "
                                        "(default: a temporary file, removed afterwards)")
    parser.add_argument("--mlp-width", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and DGL threads per role (default 1: on a shared 2-core "
                             "machine two OpenMP threads stall each other)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--role", choices=("graph", *ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batches < 1:
        parser.error("--batches must be at least 1")
    if args.role:
        _threads(args.threads)
        work = Path(args.work)
        if args.role == "graph":
            result = ensure_graph(args.graph)
        else:
            result = globals()[f"role_{args.role}"](args, work)
        print(json.dumps(result))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_products_"))
    try:
        if args.graph is None:
            args.graph = str(work / "products.bin")
        results = {}
        for role in ("graph", *ROLES):
            _log(f"role {role}")
            results[role] = run_role(role, args, work)
        summary = report(results, args)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

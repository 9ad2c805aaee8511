"""GLNN at ogbn-products' size on this machine (CPU): a mini-batch SAGE teacher that learns,
layer-wise inference over every node, then the MLP student; accuracy, time and memory.

The graph is the synthetic one of ogbn-products' shape and difficulty
(``dglkd.data.synthetic``, ``--like ogbn-products``: 2,449,029 nodes, 61,859,140 undirected
edges stored both ways, 100 features, 47 classes, products' split sizes with the most
active nodes training, calibrated so that an MLP reaches about 61-63 and GraphSAGE about
78-79 on the test nodes), loaded from ``--graph`` or generated (several minutes) and saved
there when the file is absent; ``--scale`` takes a share of its nodes and edges (same
average degree) for a quick run. Each role runs in its own process, one after the other,
so its peak resident memory (``ru_maxrss``) is its own:

* ``graph``: generates the graph and saves it (``dgl.save_graphs``), unless it exists.
* ``teacher``: SAGE 3×256 trained on blocks from ``NeighborSampler([15, 10, 5])``, seed
  batches of 1,024, Adam lr 0.003, through dglkd's engine (a config over the saved graph,
  ``data: {name: graph_file}``; ``GraphBackend.batches`` + ``train_step``, objective
  ``compose(ce=1.0)``) for ``--teacher-epochs`` epochs; after each epoch its loss,
  seconds (sampling: waiting for the loader; compute: the step) and validation accuracy on
  up to 10,000 validation nodes from blocks with the training fan-outs are logged. Then the
  layer-wise inference over every node (``dglkd.engine.inference.layerwise``, batches of
  4,096), its logits then stored in a float16 ``SoftLabelWriter`` memmap, which gives the
  teacher's exact validation and test accuracy.
* ``student``: loads no graph, only the features, labels and split ids the teacher role
  saved. The MLP alone (3 layers, ``--mlp-width``, batch norm, dropout 0.2) trained on the
  training nodes' labels for ``--mlp-epochs`` epochs, then the same MLP trained with
  ``compose(glnn=1.0)`` (λ = 0: KL to the teacher's soft labels, GLNN's released configs) on
  shuffled batches of 4,096 of every node, each reading its soft-label rows from the
  teacher's memmap, for ``--student-epochs`` epochs; each scored on the test nodes with the
  weights of its best validation epoch.
* ``latency``: for the same 1,024 random target nodes, the SAGE gathering its full 3-hop
  in-neighbourhood (``MultiLayerFullNeighborSampler(3)`` blocks) and its training fan-outs,
  against the MLP reading those nodes' features; median ms (``dglkd.engine.step.median_ms``).
  Loads the graph (CSC only, 32-bit IDs) and both models; runs on one thread (see
  ``run_role``).

Prints the per-epoch log, one table (per role: accuracy, seconds, peak RSS in GB, goal
≤ 12 GB each, the graph counted), the layer-wise inference's nodes/s, the latencies and the
MLP-vs-SAGE ratio, the total time; writes the same as JSON to ``--json FILE`` if given.

    DGLBACKEND=pytorch python benchmarks/bench_products_scale.py [--graph /tmp/products.bin] \\
        [--scale 1.0] [--teacher-epochs 3] [--mlp-epochs 5] [--student-epochs 1] \\
        [--mlp-width 1024] [--threads 1] [--json out.json]
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

ROLES = ("graph", "teacher", "student", "latency")
TEACHER = {"hidden": 256, "layers": 3, "dropout": 0.5}
FANOUTS = [15, 10, 5]
TEACHER_BATCH = 1024
STUDENT_BATCH = 4096
INFERENCE_BATCH = 4096
VAL_SAMPLE = 10_000
LATENCY_NODES = 1024
LR = 0.003


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
    # Each role is a process of its own that only trains or times, so the mode a dglkd
    # run's training phases use (dglkd.engine.env.subnormals_flushed) stays on throughout.
    torch.set_flush_denormal(True)


def role_graph(args: argparse.Namespace, work: Path) -> dict:
    """Generate the products-shaped graph and save it at ``args.graph`` unless it exists."""
    if os.path.exists(args.graph):
        return {"role": "graph", "generated": False, "peak_gb": _peak_gb()}
    from dglkd.data.synthetic import ogb_like, save_graph_file

    start = time.perf_counter()
    task = ogb_like("ogbn-products", args.scale, seed=0)
    save_graph_file(task, args.graph)
    return {"role": "graph", "generated": True, "seconds": time.perf_counter() - start,
            "edge_homophily": task.info["edge_homophily"], "peak_gb": _peak_gb()}


def _load_graph(path: str, formats: list[str], int32: bool = False):
    """The saved graph with only ``formats`` materialised (its stored COO is dropped);
    ``int32``: node and edge IDs as 32-bit integers (DGL's ``DGLGraph.int()``)."""
    import dgl

    graphs, labels = dgl.load_graphs(path)
    graph = graphs[0].int() if int32 else graphs[0]
    graph = graph.formats(formats)
    del graphs
    for split in ("train", "val", "test"):  # saved as uint8; indexing wants bool masks
        key = f"{split}_mask"
        if key in graph.ndata:
            graph.ndata[key] = graph.ndata[key].bool()
    return graph, int(labels["num_classes"][0])


def _accuracy(pred, labels) -> float:
    return float((pred == labels).float().mean())


def _epoch(epoch, model, objective, optimizer) -> dict:
    """One training epoch, each step timed in two parts: waiting for the next batch
    (sampling) and the step itself (compute)."""
    from dglkd.engine.step import train_step

    model.train()
    objective.train()
    sampling = compute = loss = 0.0
    steps = 0
    batches = iter(epoch())
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        t1 = time.perf_counter()
        loss += float(train_step(batch, model, objective, optimizer, None)["total"])
        compute += time.perf_counter() - t1
        sampling += t1 - t0
        steps += 1
    return {"loss": loss / steps, "sampling_s": sampling, "compute_s": compute, "batches": steps}


def _sampled_val_acc(model, store, val_ids) -> float:
    """Validation accuracy from blocks with the training fan-outs (cheap, approximate: the
    exact one comes from the layer-wise inference at the end)."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for item in store.loader(val_ids, FANOUTS, INFERENCE_BATCH, per_rank=False):
            pred = model(item.blocks, item.feat).argmax(1)
            correct += int((pred == store.gather("label", item.output_nodes)).sum())
    return correct / len(val_ids)


def _teacher_config(args: argparse.Namespace) -> dict:
    """The teacher phase as a dglkd config over the saved graph (no self loops: SAGE)."""
    train = {"epochs": args.teacher_epochs, "lr": LR, "weight_decay": 0.0,
             "batch_size": TEACHER_BATCH, "fanouts": FANOUTS, "num_workers": 0,
             "eval_batch_size": INFERENCE_BATCH}
    return {"name": "products_scale", "seed": 0, "n_runs": 1, "device": "cpu",
            "data": {"name": "graph_file", "path": args.graph, "self_loop": False},
            "teacher": {"model": "sage", **TEACHER}, "teacher_train": train,
            "student": {"model": "mlp"}, "train": {"epochs": 1},
            "method": {"name": "glnn"}, "log": {"progress": False, "tensorboard": False}}


def role_teacher(args: argparse.Namespace, work: Path) -> dict:
    import numpy as np
    import torch

    from dglkd.config import config_from_dict
    from dglkd.engine.graph import GraphBackend
    from dglkd.engine.inference import layerwise
    from dglkd.engine.optim import make_optimizer
    from dglkd.engine.softlabels import SoftLabelWriter, open_soft_labels
    from dglkd.methods import compose

    start = time.perf_counter()
    config = config_from_dict(_teacher_config(args))
    backend = GraphBackend(config, torch.device("cpu"), lambda _message: None)
    backend.load(0)
    store, classes = backend.train, backend.num_classes
    load_s, loaded_gb = time.perf_counter() - start, _peak_gb()
    _log(f"teacher: graph loaded in {load_s:.0f} s ({loaded_gb:.1f} GB peak)")
    feat, labels = store.gather("feat"), store.gather("label")
    ids = {split: torch.nonzero(store.gather(f"{split}_mask")).squeeze(1)
           for split in ("train", "val", "test")}
    # What the student may read without the graph (not timed).
    np.save(work / "feat.npy", feat.numpy())
    np.save(work / "label.npy", labels.numpy())
    for split, nodes in ids.items():
        np.save(work / f"{split}_ids.npy", nodes.numpy())

    torch.manual_seed(0)
    model = backend.new_model(config.teacher, "teacher")
    cfg = config.teacher_train
    objective = compose(ce=1.0, context=classes)
    optimizer = make_optimizer(cfg, model.parameters())
    # Sampled blocks of the labelled nodes, shuffled per epoch (the engine's batches).
    epoch = backend.batches(model, cfg, None, torch.Generator().manual_seed(0))
    val_sample = ids["val"][torch.randperm(len(ids["val"]),
                                           generator=torch.Generator().manual_seed(0))[:VAL_SAMPLE]]
    epochs = []
    for number in range(1, args.teacher_epochs + 1):
        row = {"epoch": number, **_epoch(epoch, model, objective, optimizer)}
        row["val_acc_sampled"] = _sampled_val_acc(model, store, val_sample)
        epochs.append(row)
        _log(f"teacher epoch {number}/{args.teacher_epochs}: loss {row['loss']:.3f}, "
             f"{row['sampling_s'] + row['compute_s']:.0f} s ({row['batches']} batches), "
             f"val acc (sampled fan-outs, {len(val_sample):,} nodes) {row['val_acc_sampled']:.4f}")
    trained_gb = _peak_gb()

    num_nodes = store.num_nodes
    _log("teacher: layer-wise inference over every node")
    t0 = time.perf_counter()
    logits = layerwise(model, store, INFERENCE_BATCH)["logits"]
    inference_s = time.perf_counter() - t0
    soft = work / "soft"
    writer = SoftLabelWriter(soft, {"logits": (num_nodes, classes)}, dtype="float16",
                             meta={"model": "sage 3x256", "epochs": args.teacher_epochs})
    writer.tensor("logits")[:] = logits
    del logits
    writer.commit()
    stored = open_soft_labels(soft)
    acc = {f"{split}_acc": _accuracy(stored.rows("logits", ids[split]).argmax(1),
                                     labels[ids[split]]) for split in ("val", "test")}
    torch.save(model.state_dict(), work / "teacher.pt")
    return {"role": "teacher", "model": "SAGE 3x256", "classes": classes, "load_s": load_s,
            "loaded_gb": loaded_gb, "trained_gb": trained_gb, "epochs": epochs, **acc,
            "train_s": sum(r["sampling_s"] + r["compute_s"] for r in epochs),
            "inference_s": inference_s, "inference_nodes_per_s": num_nodes / inference_s,
            "nodes": num_nodes, "edges": store.graph.num_edges(), "peak_gb": _peak_gb()}


def _mlp_phase(name: str, args: argparse.Namespace, epochs: int, seeds, make_batch, feat,
               labels, ids, classes: int, objective) -> dict:
    """Train a fresh MLP for ``epochs`` epochs over shuffled batches of ``seeds``; its test
    accuracy with the weights of its best validation epoch."""
    import copy

    import torch

    from dglkd.config import TrainConfig
    from dglkd.engine.optim import make_optimizer
    from dglkd.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", classes, feat.shape[1], hidden=args.mlp_width, layers=3,
                        dropout=0.2, norm="batch")
    optimizer = make_optimizer(TrainConfig(epochs=epochs, lr=LR, batch_size=STUDENT_BATCH),
                               model.parameters())
    generator = torch.Generator().manual_seed(0)

    def epoch():
        for batch_ids in seeds[torch.randperm(len(seeds), generator=generator)].split(STUDENT_BATCH):
            yield make_batch(batch_ids)

    def predict(nodes):
        model.eval()
        with torch.no_grad():
            return torch.cat([model(None, feat[part]).argmax(1)
                              for part in nodes.split(8 * STUDENT_BATCH)])

    rows, best, best_state = [], -1.0, None
    for number in range(1, epochs + 1):
        row = {"epoch": number, **_epoch(epoch, model, objective, optimizer)}
        row["val_acc"] = _accuracy(predict(ids["val"]), labels[ids["val"]])
        rows.append(row)
        _log(f"{name} epoch {number}/{epochs}: loss {row['loss']:.3f}, "
             f"{row['sampling_s'] + row['compute_s']:.0f} s, val acc {row['val_acc']:.4f}")
        if row["val_acc"] > best:
            best, best_state = row["val_acc"], copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    t0 = time.perf_counter()
    test_acc = _accuracy(predict(ids["test"]), labels[ids["test"]])
    torch.save(model.state_dict(), Path(args.work) / f"{name}.pt")
    return {"epochs": rows, "val_acc": best, "test_acc": test_acc,
            "train_s": sum(r["sampling_s"] + r["compute_s"] for r in rows),
            "test_eval_s": time.perf_counter() - t0}


def role_student(args: argparse.Namespace, work: Path) -> dict:
    import numpy as np
    import torch

    from dglkd.engine.softlabels import open_soft_labels
    from dglkd.engine.step import Batch
    from dglkd.methods import Knowledge, compose

    start = time.perf_counter()
    feat = torch.from_numpy(np.load(work / "feat.npy"))
    labels = torch.from_numpy(np.load(work / "label.npy"))
    ids = {split: torch.from_numpy(np.load(work / f"{split}_ids.npy"))
           for split in ("train", "val", "test")}
    soft = open_soft_labels(work / "soft")
    classes = soft.shape("logits")[1]
    load_s, loaded_gb = time.perf_counter() - start, _peak_gb()

    def labelled(batch_ids):
        return Batch((None, feat[batch_ids]), labels=labels[batch_ids], index=batch_ids)

    def distilled(batch_ids):
        # GLNN distils on every node (transductive): no graph, the teacher's rows only.
        return Batch((None, feat[batch_ids]), labels=labels[batch_ids], index=batch_ids,
                     teacher=Knowledge(soft.rows("logits", batch_ids)))

    common = (feat, labels, ids, classes)
    alone = _mlp_phase("mlp", args, args.mlp_epochs, ids["train"], labelled, *common,
                       compose(ce=1.0, context=classes))
    glnn = _mlp_phase("glnn", args, args.student_epochs, torch.arange(len(labels)), distilled,
                      *common, compose(glnn=1.0, context=classes))
    return {"role": "student", "model": f"MLP 3x{args.mlp_width}", "load_s": load_s,
            "loaded_gb": loaded_gb, "mlp": alone, "glnn": glnn, "peak_gb": _peak_gb()}


def role_latency(args: argparse.Namespace, work: Path) -> dict:
    import dgl
    import torch

    from dglkd.engine.step import median_ms
    from dglkd.models import build_model

    start = time.perf_counter()
    # 32-bit IDs (products' 2.45 M nodes and 124 M edges fit) halve the graph's index
    # arrays and those of every block sampled from it: the full 3-hop neighbourhood of
    # 1,024 nodes reaches almost every node (2.0 M destination nodes and 119 M edges in
    # the first layer's block), and its 64-bit indices took the role over 12 GB. Blocks
    # inherit the graph's ID type; SAGEConv runs on either.
    graph, classes = _load_graph(args.graph, ["csc"], int32=True)
    feat = graph.ndata.pop("feat")
    for key in list(graph.ndata.keys()):  # structure only: blocks copy no node data
        graph.ndata.pop(key)
    load_s, loaded_gb = time.perf_counter() - start, _peak_gb()
    sage = build_model("sage", classes, feat.shape[1], **TEACHER)
    sage.load_state_dict(torch.load(work / "teacher.pt"))
    mlp = build_model("mlp", classes, feat.shape[1], hidden=args.mlp_width, layers=3,
                      dropout=0.2, norm="batch")
    mlp.load_state_dict(torch.load(work / "glnn.pt"))
    sage.eval()
    mlp.eval()
    cpu = torch.device("cpu")
    targets = torch.randperm(graph.num_nodes(), generator=torch.Generator().manual_seed(0))
    targets = targets[:LATENCY_NODES].to(graph.idtype)
    full = dgl.dataloading.MultiLayerFullNeighborSampler(3)
    sampled = dgl.dataloading.NeighborSampler(FANOUTS)

    def gnn(sampler):
        @torch.no_grad()
        def run():
            input_nodes, _, blocks = sampler.sample(graph, targets)
            for block in blocks:
                # Edge IDs serve edge features, which SAGE reads none of: with the full
                # neighbourhood they are 119 M 32-bit integers (0.5 GB) held through the
                # forward, whose first layer is the role's peak.
                block.edata.pop(dgl.EID)
            return sage(blocks, feat[input_nodes])
        return run

    @torch.no_grad()
    def mlp_run():
        return mlp(None, feat[targets])

    _log("latency: SAGE, full 3-hop neighbourhood")
    full_ms = median_ms(gnn(full), cpu, repeats=3)
    _log("latency: SAGE, fan-outs; MLP")
    sampled_ms = median_ms(gnn(sampled), cpu, repeats=7)
    mlp_ms = median_ms(mlp_run, cpu, repeats=21)
    return {"role": "latency", "load_s": load_s, "loaded_gb": loaded_gb,
            "sage_full_ms": full_ms, "sage_fanout_ms": sampled_ms, "mlp_ms": mlp_ms,
            "peak_gb": _peak_gb()}


def run_role(role: str, args: argparse.Namespace, work: Path) -> dict:
    # The latency role runs on one thread whatever --threads says: at full size, with two
    # threads, DGL 2.1's gspmm (SAGEConv on the fan-out blocks of the 32-bit graph) died
    # with a segmentation fault, twice (``--role latency --threads 2``); one thread passed.
    threads = 1 if role == "latency" else args.threads
    command = [sys.executable, os.path.abspath(__file__), "--role", role, "--work", str(work),
               "--graph", args.graph, "--scale", str(args.scale),
               "--teacher-epochs", str(args.teacher_epochs), "--mlp-epochs", str(args.mlp_epochs),
               "--student-epochs", str(args.student_epochs), "--mlp-width", str(args.mlp_width),
               "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DGLBACKEND": "pytorch"}
    start = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"role {role} failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def report(results: dict, args: argparse.Namespace, total_s: float) -> dict:
    teacher, student, latency = (results[r] for r in ROLES[1:])
    summary = {
        "graph": {"nodes": teacher["nodes"], "edges": teacher["edges"], "scale": args.scale,
                  "file": args.graph, "generated": results["graph"]["generated"]},
        "threads": args.threads, "mlp_width": args.mlp_width,
        "test_acc": {"teacher": teacher["test_acc"], "mlp": student["mlp"]["test_acc"],
                     "glnn": student["glnn"]["test_acc"]},
        "layerwise_inference": {"seconds": teacher["inference_s"],
                                "nodes_per_s": teacher["inference_nodes_per_s"]},
        "peak_rss_gb": {r: results[r]["peak_gb"] for r in ROLES},
        "latency_ms": {"sage_full": latency["sage_full_ms"],
                       "sage_fanout": latency["sage_fanout_ms"], "mlp": latency["mlp_ms"]},
        "total_s": total_s, "roles": results,
    }
    print(f"graph: {teacher['nodes']:,} nodes, {teacher['edges']:,} directed edges "
          f"(products-shaped, scale {args.scale}, "
          f"{'generated' if summary['graph']['generated'] else 'loaded'}); "
          f"{args.threads} thread(s)")
    print("| role | model | epochs | train s | val acc | test acc | peak RSS GB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print(f"| teacher | SAGE 3x256, fan-outs {FANOUTS}, batch {TEACHER_BATCH:,} | "
          f"{args.teacher_epochs} | {teacher['train_s']:.0f} | {teacher['val_acc']:.4f} | "
          f"{teacher['test_acc']:.4f} | {teacher['peak_gb']:.2f} |")
    for name, label in (("mlp", "MLP alone (labels)"), ("glnn", "GLNN MLP (soft labels)")):
        row = student[name]
        print(f"| student | {label}, 3x{args.mlp_width} | {len(row['epochs'])} | "
              f"{row['train_s']:.0f} | {row['val_acc']:.4f} | {row['test_acc']:.4f} | "
              f"{student['peak_gb']:.2f} |")
    print(f"| latency | SAGE + MLP, {LATENCY_NODES:,} nodes | – | – | – | – | "
          f"{latency['peak_gb']:.2f} |")
    print(f"layer-wise inference, all {teacher['nodes']:,} nodes (batches of "
          f"{INFERENCE_BATCH:,}; logits then stored as a float16 memmap): {teacher['inference_s']:.0f} s, "
          f"{teacher['inference_nodes_per_s']:,.0f} nodes/s")
    print(f"latency, {LATENCY_NODES:,} nodes (median): SAGE full 3-hop "
          f"{latency['sage_full_ms']:,.0f} ms, SAGE fan-outs {latency['sage_fanout_ms']:,.1f} ms, "
          f"MLP {latency['mlp_ms']:.1f} ms → MLP "
          f"{latency['sage_full_ms'] / latency['mlp_ms']:.0f}× faster than SAGE full")
    print(f"peak RSS GB (goal ≤ 12): " + ", ".join(
        f"{r} {results[r]['peak_gb']:.2f}" for r in ROLES) + f"; total {total_s / 60:.1f} min")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", help="graph file: loaded, or generated and saved there "
                                        "(default: a temporary file, removed afterwards)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="share of products' nodes and edges when generating")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--mlp-epochs", type=int, default=5)
    parser.add_argument("--student-epochs", type=int, default=1)
    parser.add_argument("--mlp-width", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and DGL threads per role (default 1: on a shared 2-core "
                             "machine two OpenMP threads stall each other)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for key in ("teacher_epochs", "mlp_epochs", "student_epochs"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.role:
        _threads(args.threads)
        result = globals()[f"role_{args.role}"](args, Path(args.work))
        print(json.dumps(result))
        return
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_products_"))
    args.work = str(work)
    try:
        if args.graph is None:
            args.graph = str(work / "products.bin")
        results = {}
        for role in ROLES:
            _log(f"role {role}")
            results[role] = run_role(role, args, work)
            # Logged as each role ends: a later role's failure must not lose the hour before.
            _log(f"role {role} result: {json.dumps(results[role])}")
        summary = report(results, args, time.perf_counter() - start)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

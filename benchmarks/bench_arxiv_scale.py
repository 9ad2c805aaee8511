"""Full-batch training at ogbn-arxiv's size on this machine (CPU).

The synthetic graph of arxiv's shape and difficulty (``dglkd.data.synthetic``: 169,343
nodes, 1,166,243 undirected edges, 128 features, 40 classes; ``--scale`` for a share of
them) is trained full-batch through dglkd's engine (``GraphBackend.batches`` without a
batch size: the whole graph as one ``Batch``, in a phase of ``dglkd.engine.step.make_phase``): a GCN
teacher (3×256) on labels (``ce``), then an MLP student (3×256) with GLNN (``glnn``, λ = 0)
on the teacher's soft labels. Each role runs in its own process so its peak memory is its
own. Prints seconds per epoch (train step + evaluation), peak resident memory, and the
GNN-vs-MLP inference speedup for the same 1,024 nodes (``GraphBackend.inference``).

    python benchmarks/bench_arxiv_scale.py [--epochs 5] [--scale 1.0]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

ROLES = ("teacher", "student")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(epochs: int, scale: float) -> dict:
    """The run's config: arxiv's shape at ``scale``, OGB's leaderboard GCN and its MLP."""
    model = {"hidden": 256, "layers": 3, "dropout": 0.5, "norm": "batch"}
    train = {"epochs": epochs, "lr": 0.01, "weight_decay": 0.0}
    return {"name": "arxiv_scale", "seed": 0, "n_runs": 1, "device": "cpu",
            "data": {"name": "synthetic", "like": "ogbn-arxiv", "scale": scale},
            "teacher": {"model": "gcn", **model}, "teacher_train": train,
            "student": {"model": "mlp", **model}, "train": train,
            "method": {"name": "glnn", "lam": 0.0},
            "log": {"progress": False, "tensorboard": False}}


def measure(role: str, epochs: int, scale: float) -> dict:
    import torch

    from dglkd.config import config_from_dict
    from dglkd.engine.graph import GraphBackend
    from dglkd.engine.step import make_phase
    from dglkd.methods import compose

    config = config_from_dict(_config(epochs, scale))
    backend = GraphBackend(config, torch.device("cpu"), lambda _message: None)
    torch.manual_seed(0)
    backend.load(0)
    loaded_mib = _peak_mib()
    teacher = backend.new_model(config.teacher, "teacher")
    student = backend.new_model(config.student, "student")
    if role == "teacher":
        model, objective, knowledge = teacher, compose(ce=1.0), None
    else:
        model = student
        objective = compose(glnn={"lam": 0.0}, context=backend.num_classes)
        knowledge = backend.knowledge(teacher, [], None)
    # The whole graph, one step per epoch (no batch_size: full batch).
    batches = backend.batches(model, config.train, knowledge, backend.generator())
    phase = make_phase(role, model, objective, batches, config.train,
                       lambda: backend.evaluate(model))
    phase.train_epoch(0)  # warm-up
    start = time.perf_counter()
    for epoch in range(epochs):
        phase.train_epoch(epoch)
        metrics = phase.evaluate()
    seconds = (time.perf_counter() - start) / epochs
    graph = backend.eval.graph
    out = {"role": role, "seconds_per_epoch": seconds, "peak_mib": _peak_mib(),
           "graph_loaded_mib": loaded_mib, "val_acc": metrics["val_acc"],
           "nodes": graph.num_nodes(), "edges": graph.num_edges(),
           "features": int(graph.ndata["feat"].shape[1]), "classes": backend.num_classes}
    if role == "student":
        out.update(backend.inference(teacher, student, 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="share of ogbn-arxiv's nodes and edges (same average degree)")
    parser.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        print(json.dumps(measure(args.role, args.epochs, args.scale)))
        return
    rows = []
    for role in ROLES:
        proc = subprocess.run([sys.executable, __file__, "--role", role, "--epochs",
                               str(args.epochs), "--scale", str(args.scale)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    teacher, student = rows
    print(f"graph: {teacher['nodes']:,} nodes, {teacher['edges']:,} directed edges "
          f"(self-loops included), {teacher['features']} features, {teacher['classes']} "
          f"classes; {args.epochs} epochs each")
    print("| role | model | s/epoch (step + eval) | peak RSS MiB | of which graph MiB |")
    print("|---|---|---:|---:|---:|")
    for row, model in ((teacher, "GCN 3×256"), (student, "MLP 3×256 (GLNN)")):
        print(f"| {row['role']} | {model} | {row['seconds_per_epoch']:.2f} | "
              f"{row['peak_mib']:.0f} | {row['graph_loaded_mib']:.0f} |")
    print(f"student/teacher epoch time: {student['seconds_per_epoch'] / teacher['seconds_per_epoch']:.2f}")
    print(f"inference, 1,024 nodes: GCN {student['teacher_ms']:.1f} ms (3-hop neighbourhood), "
          f"MLP {student['student_ms']:.2f} ms → {student['teacher_ms'] / student['student_ms']:.0f}× faster")


if __name__ == "__main__":
    main()

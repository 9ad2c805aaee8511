"""Full-batch training at ogbn-arxiv's size on this machine (CPU).

A synthetic graph with arxiv's shape (169,343 nodes, ~1.17 M undirected edges, 128
features, 40 classes) is trained full-batch through dglkd's engine (the whole graph as one
``Batch``, ``GraphData.full_batch``, in a phase of ``dglkd.engine.step.make_phase``): a GCN
teacher (3×256) on labels (``ce``), then an MLP student (3×256) with GLNN (``glnn``, λ = 0)
on the teacher's soft labels. Each role runs in its own process so its peak memory is its
own. Prints seconds per epoch (train step + evaluation), peak resident memory, and the
GNN-vs-MLP inference speedup for the same 1,024 nodes.

    python benchmarks/bench_arxiv_scale.py [--epochs 5] [--nodes N --edges M]
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


def measure(role: str, epochs: int, nodes: int, edges: int) -> dict:
    import torch

    from dglkd.config import TrainConfig
    from dglkd.data.synthetic import synthetic_node_graph
    from dglkd.engine.graph import GraphData, inference_ms, inference_targets
    from dglkd.engine.step import make_phase
    from dglkd.methods import compose
    from dglkd.models import build_model

    torch.manual_seed(0)
    task = synthetic_node_graph(num_nodes=nodes, num_edges=edges, seed=0)
    data = GraphData(task, torch.device("cpu"), self_loop=True)
    loaded_mib = _peak_mib()
    classes, features = task.num_classes, task.num_features
    teacher = build_model("gcn", classes, features, hidden=256, layers=3, dropout=0.5,
                          norm="batch")
    student = build_model("mlp", classes, features, hidden=256, layers=3, dropout=0.5,
                          norm="batch")
    if role == "teacher":
        model, objective, knowledge = teacher, compose(ce=1.0), None
    else:
        model, objective = student, compose(glnn={"lam": 0.0}, context=classes)
        knowledge = data.knowledge(teacher, [])
    batch = data.full_batch(knowledge)  # the whole graph, one step per epoch
    phase = make_phase(role, model, objective, lambda: iter([batch]),
                       TrainConfig(epochs=epochs), lambda: data.evaluate(model))
    phase.train_epoch(0)  # warm-up
    start = time.perf_counter()
    for epoch in range(epochs):
        phase.train_epoch(epoch)
        metrics = phase.evaluate()
    seconds = (time.perf_counter() - start) / epochs
    out = {"role": role, "seconds_per_epoch": seconds, "peak_mib": _peak_mib(),
           "graph_loaded_mib": loaded_mib, "val_acc": metrics["val_acc"],
           "nodes": data.eval_graph.num_nodes(), "edges": data.eval_graph.num_edges(),
           "features": features, "classes": classes}
    if role == "student":
        targets = inference_targets(data, 1024, 0)
        out["teacher_ms"] = inference_ms(teacher, data, targets)
        out["student_ms"] = inference_ms(student, data, targets)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=169_343,
                        help="nodes of the synthetic graph (default: ogbn-arxiv's)")
    parser.add_argument("--edges", type=int, default=1_166_243,
                        help="undirected edges drawn (default: ogbn-arxiv's)")
    parser.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        print(json.dumps(measure(args.role, args.epochs, args.nodes, args.edges)))
        return
    rows = []
    for role in ROLES:
        proc = subprocess.run([sys.executable, __file__, "--role", role, "--epochs",
                               str(args.epochs), "--nodes", str(args.nodes), "--edges",
                               str(args.edges)], capture_output=True, text=True, check=True)
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

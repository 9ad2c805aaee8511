"""Full-batch training at ogbn-arxiv's size on this machine (CPU).

A synthetic graph with arxiv's shape (169,343 nodes, ~1.17 M undirected edges, 128
features, 40 classes) is trained full-batch through dglkd's engine: a GCN teacher (3×256)
on labels, then an MLP student (3×256) with GLNN. Each role runs in its own process so its
peak memory is its own. Prints seconds per epoch (train step + evaluation), peak resident
memory, and the GNN-vs-MLP inference speedup for the same 1,024 nodes.

    python benchmarks/bench_arxiv_scale.py [--epochs 5]
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


def measure(role: str, epochs: int) -> dict:
    import torch

    from dglkd.config import TrainConfig
    from dglkd.data.synthetic import synthetic_node_graph
    from dglkd.engine.graph import GraphData, graph_phase, inference_ms, inference_targets
    from dglkd.methods import build_method
    from dglkd.models import build_model

    torch.manual_seed(0)
    data = GraphData(synthetic_node_graph(seed=0), torch.device("cpu"), self_loop=True)
    loaded_mib = _peak_mib()
    teacher = build_model("gcn", 40, 128, hidden=256, layers=3, dropout=0.5, norm="batch")
    student = build_model("mlp", 40, 128, hidden=256, layers=3, dropout=0.5, norm="batch")
    if role == "teacher":
        model, method, knowledge = teacher, build_method("ce"), None
    else:
        model, method = student, build_method("glnn", 40, lam=0.0)
        knowledge = data.knowledge(teacher, [])
    phase = graph_phase(role, model, method, data, knowledge, TrainConfig(epochs=epochs), {})
    phase.train_epoch()  # warm-up
    start = time.perf_counter()
    for _ in range(epochs):
        phase.train_epoch()
        metrics = phase.evaluate()
    seconds = (time.perf_counter() - start) / epochs
    out = {"role": role, "seconds_per_epoch": seconds, "peak_mib": _peak_mib(),
           "graph_loaded_mib": loaded_mib, "val_acc": metrics["val_acc"],
           "nodes": data.eval_graph.num_nodes(), "edges": data.eval_graph.num_edges()}
    if role == "student":
        targets = inference_targets(data, 1024, 0)
        out["teacher_ms"] = inference_ms(teacher, data, targets)
        out["student_ms"] = inference_ms(student, data, targets)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        print(json.dumps(measure(args.role, args.epochs)))
        return
    rows = []
    for role in ROLES:
        proc = subprocess.run([sys.executable, __file__, "--role", role, "--epochs",
                               str(args.epochs)], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    teacher, student = rows
    print(f"graph: {teacher['nodes']:,} nodes, {teacher['edges']:,} directed edges "
          f"(self-loops included), 128 features, 40 classes; {args.epochs} epochs each")
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

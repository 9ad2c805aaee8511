"""What LSP and MHGD cost, each as a ratio to a plain baseline.

(a) LSP loss forward+backward on a random graph (100,000 nodes, 1,000,000 random edges plus
    a self-loop per node) with 128-d teacher and student features, for the authors' ``l1``
    kernel and the dot-product kernels ``linear`` and ``cosine``, each divided by the
    forward+backward of one ``dgl.nn.GraphConv(128, 128)`` on the same graph (DESIGN goal
    <= 2). DGL runs on the CPU.
(b) MHGD training step in its second stage (after ``end_pretraining()``): cnn_small ->
    cnn_tiny, batch 64 of random 1x28x28 images, 10 classes; teacher and student forward
    (stages captured), ``ce + mhgd`` (MHGD's paper recipe), backward, SGD step (the
    engine's ``train_step``); divided by a plain CE step of the student alone (and, for
    reference, by a ``ce + kd`` step, which also runs the teacher). Runs on ``--device``.

    python benchmarks/bench_lsp_mhgd.py [--threads 1] [--steps 10] [--device cpu]
"""
from __future__ import annotations

import argparse
import copy

import dgl
import dgl.nn as dglnn
import torch

from timing import (add_common_args, header, image_context, interleaved_times, median, ratio,
                    setup, training_step)
from dglkd.methods import build_method, compose
from dglkd.methods.lsp import LSPParams, local_structure_kl
from dglkd.models import build_model

NODES, EDGES, DIM = 100_000, 1_000_000, 128
KERNELS = ("l1", "linear", "cosine")
BATCH, CLASSES, IMAGE = 64, 10, (1, 28, 28)


def lsp_arms() -> tuple[dict, dgl.DGLGraph]:
    """GraphConv and one LSP arm per kernel, forward+backward on one random graph (CPU)."""
    graph = dgl.add_self_loop(dgl.rand_graph(NODES, EDGES))
    teacher = torch.randn(NODES, DIM)
    student = torch.randn(NODES, DIM, requires_grad=True)
    conv = dglnn.GraphConv(DIM, DIM)
    arms = {"GraphConv": lambda: conv(graph, student).sum().backward()}
    for kernel in KERNELS:
        params = LSPParams(kernel=kernel)
        arms[kernel] = (lambda p=params:
                        local_structure_kl(graph, student, teacher, p).backward())
    return arms, graph


def mhgd_arms(device: torch.device) -> dict:
    """A plain CE step of the student, a KD step (for the teacher forward's share) and an
    MHGD stage-2 step, each on its own copy of the student."""
    teacher = build_model("cnn_small", CLASSES, IMAGE).to(device).eval()
    student = build_model("cnn_tiny", CLASSES, IMAGE).to(device)
    images = torch.randn(BATCH, *IMAGE, device=device)
    labels = torch.randint(CLASSES, (BATCH,), device=device)
    mhgd = build_method("mhgd", image_context(teacher, student, images))
    mhgd.end_pretraining()
    objectives = {"CE": compose(ce=1.0, context=CLASSES),
                  "KD": compose(ce=1.0, kd=1.0, context=CLASSES),
                  "MHGD": compose(ce=1.0, mhgd=mhgd, context=CLASSES)}
    return {label: training_step(None if label == "CE" else teacher, copy.deepcopy(student),
                                 objective.to(device), images, labels)
            for label, objective in objectives.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, warmup=2, steps=10)
    args = parser.parse_args()
    device = setup(args)
    print(header(args, device))

    cpu = torch.device("cpu")
    arms, graph = lsp_arms()
    times = interleaved_times(arms, args.warmup, args.steps, cpu)
    print(f"(a) LSP loss vs GraphConv({DIM}->{DIM}), forward+backward, cpu: "
          f"{graph.num_nodes():,} nodes, {graph.num_edges():,} edges (self-loops included)")
    for arm, values in times.items():
        print(f"    {arm:9s} {median(values):.3f} s")
    for kernel in KERNELS:
        print(f"    {ratio(times, kernel, 'GraphConv')}")
    print("    DESIGN: aim <= 2 (the authors' l1 loss measured 4.55)")

    times = interleaved_times(mhgd_arms(device), args.warmup, args.steps * 3, device)
    print(f"(b) training step, cnn_small -> cnn_tiny, batch {BATCH}, random 1x28x28, "
          f"{CLASSES} classes, MHGD stage 2, {device}, {args.steps * 3} rounds")
    for arm, values in times.items():
        print(f"    {arm:9s} {median(values) * 1e3:.1f} ms/step")
    print(f"    {ratio(times, 'MHGD', 'CE')}")
    print(f"    {ratio(times, 'MHGD', 'KD')} (both forward the teacher)")


if __name__ == "__main__":
    main()

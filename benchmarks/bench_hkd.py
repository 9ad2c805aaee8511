"""What HKD costs: its training step against KD's, and its instance graph DGL vs dense.

(a) Full training step, resnet32x4 -> resnet8x4, batch 64 of random 3x32x32 images, 100
    classes: teacher forward (no_grad, tapped for ``pool``), student forward (tapped),
    objective's terms, backward, SGD step (the engine's ``train_step``). KD (``ce + kd``,
    T=4) vs HKD+KD, HKD's paper recipe ``ce + kd + 3*hkd`` with its defaults (memory bank
    of 50,000 instances, 16,384 negatives).
(b) The instance-graph part alone, per network: kNN graph (k=8 on softmax(logits), self
    included) + TAGConv K=1 encoder, forward+backward on 64 rows of 128-d embeddings,
    HKD's ``graph_backend="dgl"`` path vs its ``"dense"`` path, on the CPU.
(c) With ``--device cuda``: (a) runs on the GPU (HKD's default dense path needs no DGL)
    and the dense path of (b) is timed there too; the DGL path stays on the CPU, as DGL
    has no CUDA build here.

    python benchmarks/bench_hkd.py [--threads 1] [--steps 8] [--device cpu]
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

from timing import (add_common_args, header, image_context, interleaved_times, median, ratio,
                    setup, training_step)
from dglkd.graphs import dense_knn_index, knn_instance_graph
from dglkd.methods import compose
from dglkd.methods.hkd import GraphEncoder, HKDParams
from dglkd.methods.recipe import build_recipe, recipe_spec
from dglkd.models import build_model

BATCH, CLASSES, IMAGE, INSTANCES, EMBED = 64, 100, (3, 32, 32), 50_000, 128


def step_arms(device: torch.device, batch: int = BATCH) -> dict:
    """One training-step closure per method, each with its own copy of the student."""
    teacher = build_model("resnet32x4", CLASSES, IMAGE).to(device).eval()
    student = build_model("resnet8x4", CLASSES, IMAGE).to(device)
    bank_labels = torch.randint(CLASSES, (INSTANCES,))
    images = torch.randn(batch, *IMAGE, device=device)
    index = torch.randperm(INSTANCES)[:batch]
    labels = bank_labels[index].to(device)
    context = image_context(teacher, student, images, instance_labels=bank_labels)
    objectives = {"KD": compose(ce=1.0, kd={"weight": 1.0, "temperature": 4.0},
                                context=context),
                  "HKD+KD": build_recipe(recipe_spec({"name": "hkd"}), context)}
    return {label: training_step(teacher, copy.deepcopy(student), objective.to(device),
                                 images, labels, index.to(device))
            for label, objective in objectives.items()}


def graph_arms(device: torch.device, backends: tuple[str, ...]) -> dict:
    """kNN graph + TAGConv K=1 forward+backward for one network, per graph backend."""
    p = HKDParams()
    options = dict(k=p.k, metric=p.knn_metric, include_self=p.knn_include_self,
                   softmax=p.knn_softmax)
    encoder = GraphEncoder(p.encoder, p.embed_dim, p.encoder_hops).to(device)
    logits = torch.randn(BATCH, CLASSES, device=device)
    z = F.normalize(torch.randn(BATCH, EMBED, device=device), dim=1).requires_grad_()
    paths = {
        "dgl": lambda: encoder(knn_instance_graph(logits, **options), z),
        "dense": lambda: encoder.dense(z, dense_knn_index(logits, **options)),
    }
    return {name: (lambda run=paths[name]: run().sum().backward()) for name in backends}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, warmup=3, steps=8)
    parser.add_argument("--graph-steps", type=int, default=300,
                        help="timed rounds per arm in (b) and (c)")
    args = parser.parse_args()
    device = setup(args)
    print(header(args, device))

    times = interleaved_times(step_arms(device), args.warmup, args.steps, device)
    print(f"(a) training step, resnet32x4 -> resnet8x4, batch {BATCH}, random 3x32x32, "
          f"{CLASSES} classes; HKD bank {INSTANCES:,} x {EMBED}, 16,384 negatives")
    for arm, values in times.items():
        print(f"    {arm:7s} {median(values):.3f} s/step")
    print(f"    {ratio(times, 'HKD+KD', 'KD')}; DESIGN goal <= 1.10")

    cpu = torch.device("cpu")
    times = interleaved_times(graph_arms(cpu, ("dgl", "dense")), 20, args.graph_steps, cpu)
    print(f"(b) instance graph per network (kNN k=8 + TAGConv K=1, forward+backward), "
          f"{BATCH} x {EMBED}, cpu, {args.graph_steps} rounds")
    for arm, values in times.items():
        print(f"    {arm:7s} {median(values) * 1e3:.3f} ms")
    print(f"    {ratio(times, 'dgl', 'dense')}")

    if device.type == "cuda":
        times = interleaved_times(graph_arms(device, ("dense",)), 20, args.graph_steps, device)
        print(f"(c) dense path on {device}: {median(times['dense']) * 1e3:.3f} ms")
    else:
        print("(c) dense path on a GPU: run with --device cuda (no GPU here)")


if __name__ == "__main__":
    main()

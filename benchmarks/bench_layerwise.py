"""Layer-wise inference over every node: dglkd's against a loop in the manner of DGL's own.

On one OGB-shaped graph (``dglkd.data.synthetic``: ogbn-arxiv's shape by default,
``--like ogbn-products`` for products', or a saved graph with ``--graph``) and one model
(GraphSAGE 3×256, dglkd's ``sage``, eval mode; timing does not depend on the weights'
values, so they are left at their seeded initialisation), two arms compute the logits of
every node:

* ``dglkd``: :func:`dglkd.engine.inference.layerwise_inference` (batches of 4,096);
* ``dgl_loop``: the inference loop of DGL's GraphSAGE example
  (``examples/pytorch/graphsage/node_classification.py``, ``SAGE.inference``), written here
  from its idea: for each layer, a ``DataLoader`` over all nodes with
  ``MultiLayerFullNeighborSampler(1)``, batch 4,096, no shuffling; each batch's input rows
  gathered from the previous layer's output, the layer applied to the batch's block
  (ReLU between layers), the rows written into that layer's full output buffer.

Both run the same layer modules, so their logits must agree (checked, to 1e-4). The arms
run interleaved (A B, B A, ...) for ``--rounds`` rounds after one warm-up each, in one
process with ``--threads`` threads; prints each arm's median seconds and nodes per second
and the ratio dglkd / DGL loop (below 1: dglkd is faster).

    DGLBACKEND=pytorch python benchmarks/bench_layerwise.py [--like ogbn-arxiv] \\
        [--scale 1.0] [--graph FILE] [--rounds 3] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("DGLBACKEND", "pytorch")

import dgl  # noqa: E402
import torch  # noqa: E402

from dglkd.data.synthetic import ogb_like  # noqa: E402
from dglkd.data.user import load_graph_file  # noqa: E402
from dglkd.engine.inference import layerwise_inference  # noqa: E402
from dglkd.models import build_model  # noqa: E402

BATCH = 4096
SAGE = {"hidden": 256, "layers": 3, "dropout": 0.5}


@torch.no_grad()
def dgl_style_inference(model, graph: dgl.DGLGraph, feat: torch.Tensor,
                        batch_size: int) -> torch.Tensor:
    """All nodes' logits layer by layer, as DGL's GraphSAGE example computes them."""
    sampler = dgl.dataloading.MultiLayerFullNeighborSampler(1)
    loader = dgl.dataloading.DataLoader(
        graph, torch.arange(graph.num_nodes(), dtype=graph.idtype), sampler,
        batch_size=batch_size, shuffle=False, drop_last=False, num_workers=0)
    h = feat
    for index, layer in enumerate(model.layers):
        last = index == len(model.layers) - 1
        out = torch.empty(graph.num_nodes(), model.widths[index + 1])
        for input_nodes, output_nodes, blocks in loader:
            y = layer(blocks[0], h[input_nodes])
            out[output_nodes] = y if last else torch.relu(y)
        h = out
    return h


def _graph(args: argparse.Namespace) -> tuple[dgl.DGLGraph, int, str]:
    """The graph, its number of classes and its description."""
    if args.graph:
        task = load_graph_file(args.graph)
        what = f"{args.graph}"
    else:
        task = ogb_like(args.like, args.scale, seed=0)
        what = f"{args.like}-shaped (scale {args.scale}, seed 0)"
    return task.graph, task.num_classes, what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", default="ogbn-arxiv", choices=("ogbn-arxiv", "ogbn-products"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--graph", help="a dgl.save_graphs file instead of generating one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and DGL threads (default 1: on a shared 2-core machine "
                             "two OpenMP threads stall each other)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dgl.utils.set_num_threads(args.threads)
    graph, classes, what = _graph(args)
    feat = graph.ndata.pop("feat")
    for key in list(graph.ndata.keys()):  # structure only: blocks copy no node data
        graph.ndata.pop(key)
    torch.manual_seed(0)
    model = build_model("sage", classes, feat.shape[1], **SAGE).eval()
    arms = {"dglkd": lambda: layerwise_inference(model, graph, feat, BATCH)[0],
            "dgl_loop": lambda: dgl_style_inference(model, graph, feat, BATCH)}
    outputs = {name: run() for name, run in arms.items()}  # warm-up, and the check
    diff = float((outputs["dglkd"] - outputs["dgl_loop"]).abs().max())
    del outputs
    times: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for round_ in range(args.rounds):
        for name in names[round_ % 2:] + names[:round_ % 2]:
            start = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    n = graph.num_nodes()
    result = {"graph": what, "nodes": n, "edges": graph.num_edges(), "model": "SAGE 3x256",
              "batch": BATCH, "threads": args.threads, "rounds": args.rounds,
              "max_abs_diff": diff, "times": times, "median_s": median,
              "nodes_per_s": {k: n / v for k, v in median.items()},
              "ratio": median["dglkd"] / median["dgl_loop"]}
    print(f"graph: {what}: {n:,} nodes, {graph.num_edges():,} directed edges; SAGE 3x256, "
          f"batch {BATCH:,}, {args.threads} thread(s), {args.rounds} interleaved rounds")
    for name in names:
        print(f"{name}: median {median[name]:.1f} s, {n / median[name]:,.0f} nodes/s")
    print(f"ratio dglkd / DGL-style loop: {result['ratio']:.3f} (logits agree to {diff:.1e})")
    if diff > 1e-4:
        print("error: the two arms' logits differ", file=sys.stderr)
        sys.exit(1)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()

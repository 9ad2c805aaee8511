"""Calibrate the OGB-like generator: MLP, GNN and GLNN accuracy on one generated graph.

Trains, full batch on CPU, with dglkd's own models (``dglkd.models.build_model``) and
OGB's leaderboard recipes: the MLP alone (3×256, batch norm, dropout 0.5, Adam lr 0.01),
the GNN teacher (``--gnn gcn``: GCN 3×256, batch norm, dropout 0.5, lr 0.01, as OGB's
arxiv GCN; ``--gnn sage``: GraphSAGE 3×256, same) and the GLNN student (the MLP trained
on the teacher's softened predictions of every node, λ = 0, as GLNN's released configs).
Each model is scored on the test nodes at its best validation epoch. Prints one JSON line
per run (the shape's fields, the measured edge homophily, the three test accuracies);
``--set field=value`` changes a field of the preset (repeatable, comma-separated values
give a grid: every combination is run).

    python benchmarks/calibrate_ogb_like.py --like ogbn-arxiv --scale 0.12 \\
        --set noise=4.2,4.4 --set misled=0.3 [--epochs 300] [--seeds 0,1] [--proxy]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

os.environ.setdefault("DGLBACKEND", "pytorch")

import dgl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dglkd.data.synthetic import generate, shape_of, to_task  # noqa: E402
from dglkd.models import build_model  # noqa: E402

RECIPE = {"hidden": 256, "layers": 3, "dropout": 0.5, "norm": "batch"}


def _fit(model, graph, feat, target, masks, epochs: int, lr: float) -> float:
    """Full-batch training on ``target(logits)``; test accuracy at the best val epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    labels = graph.ndata["label"]
    best_val, best_test = -1.0, 0.0
    for _ in range(epochs):
        model.train()
        optimizer.zero_grad()
        target(model(graph, feat)).backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            pred = model(graph, feat).argmax(1)
        val = float((pred[masks["val"]] == labels[masks["val"]]).float().mean())
        if val > best_val:
            best_val = val
            best_test = float((pred[masks["test"]] == labels[masks["test"]]).float().mean())
    return best_test


def _linear(x, labels, masks, soft=None, steps: int = 300):
    """Softmax regression on fixed features (a fast stand-in for a trained model), on the
    training labels, or with ``soft`` on every node's soft label (GLNN's λ = 0). Returns
    the test accuracy and the class probabilities of every node, both at the best
    validation step."""
    x = (x - x[masks["train"]].mean(0)) / (x[masks["train"]].std(0) + 1e-6)
    layer = torch.nn.Linear(x.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    best_val, best = -1.0, (0.0, None)
    for step in range(steps):
        optimizer.zero_grad()
        if soft is None:
            loss = F.cross_entropy(layer(x[masks["train"]]), labels[masks["train"]])
        else:
            loss = F.kl_div(layer(x).log_softmax(1), soft, reduction="batchmean")
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            with torch.no_grad():
                prob = layer(x).softmax(1)
            pred = prob.argmax(1)
            val = float((pred[masks["val"]] == labels[masks["val"]]).float().mean())
            if val > best_val:
                best_val = val
                best = (float((pred[masks["test"]] == labels[masks["test"]]).float().mean()),
                        prob)
    return best


def proxies(graph, feat, labels, masks, hops: int = 3) -> dict:
    """Linear stand-ins: the features alone (for the MLP), the features with their
    1..``hops``-hop mean aggregations (SIGN-style, for the GNN), and the features alone
    fitted to that GNN stand-in's soft labels of every node (for GLNN)."""
    g = dgl.add_self_loop(dgl.remove_self_loop(graph))
    deg = g.in_degrees().float().clamp(min=1)[:, None]
    hs, h = [feat], feat
    for _ in range(hops):
        g.ndata["h"] = h
        g.update_all(dgl.function.copy_u("h", "m"), dgl.function.sum("m", "h"))
        h = g.ndata.pop("h") / deg
        hs.append(h)
    gnn, soft = _linear(torch.cat(hs, 1), labels, masks)
    return {"mlp_proxy": _linear(feat, labels, masks)[0], "gnn_proxy": gnn,
            "glnn_proxy": _linear(feat, labels, masks, soft)[0]}


def run(like: str, scale: float, seed: int, changes: dict, gnn: str, epochs: int,
        glnn: bool, proxy: bool = False, mlp: bool = True) -> dict:
    start = time.perf_counter()
    data = generate(shape_of(like, scale, **changes), seed)
    task = to_task(data)
    graph = dgl.add_self_loop(task.graph) if gnn == "gcn" else task.graph
    feat, labels = graph.ndata["feat"], graph.ndata["label"]
    masks = {s: graph.ndata[f"{s}_mask"] for s in ("train", "val", "test")}
    train = masks["train"]

    def ce(logits):
        return F.cross_entropy(logits[train], labels[train])

    torch.manual_seed(seed)
    out = {"like": like, "scale": scale, "seed": seed, **changes, "gnn": gnn,
           "edge_homophily": data.info()["edge_homophily"]}
    classes, width = task.num_classes, task.num_features
    if proxy:
        out.update(proxies(task.graph, feat, labels, masks))
        out["seconds"] = round(time.perf_counter() - start, 1)
        return out
    if mlp:
        out["mlp"] = _fit(build_model("mlp", classes, width, **RECIPE), graph, feat, ce, masks,
                          epochs, 0.01)
    teacher = build_model(gnn, classes, width, **RECIPE)
    out[gnn] = _fit(teacher, graph, feat, ce, masks, epochs, 0.01)
    if glnn:
        teacher.eval()
        with torch.no_grad():
            soft = teacher(graph, feat).softmax(1)

        def kl(logits):
            return F.kl_div(logits.log_softmax(1), soft, reduction="batchmean")

        out["glnn"] = _fit(build_model("mlp", classes, width, **RECIPE), graph, feat, kl,
                           masks, epochs, 0.01)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", default="ogbn-arxiv")
    parser.add_argument("--scale", type=float, default=0.12)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--gnn", choices=("gcn", "sage"), default="gcn")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--no-glnn", action="store_true")
    parser.add_argument("--no-mlp", action="store_true",
                        help="skip the MLP alone (its level follows the features: --proxy "
                             "gives it far sooner)")
    parser.add_argument("--proxy", action="store_true",
                        help="linear stand-ins only (minutes): softmax regression on the "
                             "features, on the features with 1-3 hop means, and on the "
                             "features fitted to the latter's soft labels (GLNN)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=V1,V2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = {}
    for item in args.set:
        key, _, values = item.partition("=")
        grid[key] = [_value(v) for v in values.split(",")]
    for combo in itertools.product(*grid.values()):
        for seed in (int(s) for s in args.seeds.split(",")):
            result = run(args.like, args.scale, seed, dict(zip(grid, combo)), args.gnn,
                         args.epochs, not args.no_glnn, args.proxy, not args.no_mlp)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""Distill a GCN teacher into an MLP on an OGB node-property dataset, in your own loop.

dglkd is used only as a plugin here: the loops are plain PyTorch/DGL; dglkd loads the
dataset (through ogb's own ``DglNodePropPredDataset``, scored by ogb's ``Evaluator``) and
builds the distillation objective (``dglkd.compose``), which returns its named, weighted
terms. Prints the GCN teacher's, the MLP's alone and the distilled MLP's test accuracy.

    python examples/distill_gcn_ogb.py --dataset ogbn-arxiv --root data/ogb

downloads ogbn-arxiv into --root when online; offline, put the extracted dataset there.
Without the real files, run it on a synthetic dataset of arxiv's shape and difficulty,
written once in OGB's layout under --root (``dglkd.data.synthetic``; a smaller --scale
runs faster):

    python examples/distill_gcn_ogb.py --synthetic-like ogbn-arxiv --root data/ogb-like
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import dgl
import torch
import torch.nn.functional as F

import dglkd
import dglkd.data
from dglkd.data.ogb_layout import SYNTHETIC_MARKER
from dglkd.data.synthetic import ogb_folder, write_ogb_like
from dglkd.errors import DglkdError
from dglkd.models import build_model


@torch.no_grad()
def score(task, model, graph, feat, split: str) -> float:
    """``task.metric`` (OGB's Evaluator for OGB datasets) on the nodes of ``split``."""
    model.eval()
    pred = model(graph, feat).argmax(-1)
    mask = graph.ndata[f"{split}_mask"]
    return task.metric(pred[mask], graph.ndata["label"][mask])


def fit(task, model, graph, feat, loss_of_logits, epochs: int, lr: float) -> None:
    """Full-batch Adam for ``epochs`` epochs; keeps the weights of the best validation
    epoch, as OGB's examples report the test score there."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        optimizer.zero_grad()
        loss = loss_of_logits(model(graph, feat))
        loss.backward()
        optimizer.step()
        val = score(task, model, graph, feat, "val")
        if val > best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)


def synthetic_root(like: str, root: str, scale: float, seed: int) -> None:
    """Write the synthetic dataset under ``root`` unless the same one is already there."""
    marker = ogb_folder(root, like) / SYNTHETIC_MARKER
    if marker.is_file():
        written = json.loads(marker.read_text())
        if (written.get("scale"), written.get("seed")) == (scale, seed):
            return
    print(f"writing a synthetic {like}-shaped dataset (scale {scale}) under {root} ...")
    write_ogb_like(root, like, scale, seed)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ogbn-arxiv")
    parser.add_argument("--root", default="data/ogb")
    parser.add_argument("--synthetic-like", choices=("ogbn-arxiv", "ogbn-products"),
                        help="write (once) and use a synthetic dataset of this shape instead")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="with --synthetic-like: share of the real node and edge counts")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=0.2, help="the MLPs' dropout")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    if args.synthetic_like:
        synthetic_root(args.synthetic_like, args.root, args.scale, seed=0)
        args.dataset = args.synthetic_like
    task = dglkd.data.load(args.dataset, root=args.root)
    graph = dgl.add_self_loop(task.graph).to(args.device)
    feat, labels, train = graph.ndata["feat"], graph.ndata["label"], graph.ndata["train_mask"]
    classes, width = task.num_classes, task.num_features

    def mlp():
        return build_model("mlp", classes, width, hidden=args.hidden, layers=3,
                           dropout=args.dropout, norm="batch").to(args.device)

    def ce(out: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out[train], labels[train])

    # 1. Teacher: a 3-layer GCN trained on labels, your usual loop (OGB's arxiv GCN).
    teacher = build_model("gcn", classes, width, hidden=args.hidden, layers=3,
                          norm="batch").to(args.device)
    fit(task, teacher, graph, feat, ce, args.epochs, 0.01)
    teacher.eval()
    with torch.no_grad():
        teacher_logits = teacher(graph, feat)  # soft labels for every node, computed once

    # 2. The same MLP alone, on labels: what distillation has to beat.
    alone = mlp()
    fit(task, alone, graph, feat, ce, args.epochs, 0.01)

    # 3. Student: the MLP on node features alone, trained with dglkd's GLNN objective
    #    (λ = 0: the KL to the teacher's soft labels on every node).
    student = mlp()
    glnn = dglkd.compose(glnn={"lam": 0.0}, context=classes)

    def distill_loss(out: torch.Tensor) -> torch.Tensor:
        terms = glnn(out, teacher_logits, labels=labels, label_mask=train)  # {"glnn.kd": ...}
        return sum(terms.values())

    fit(task, student, graph, feat, distill_loss, args.epochs, 0.01)

    scores = {name: score(task, model, graph, feat, "test")
              for name, model in (("teacher", teacher), ("mlp", alone), ("student", student))}
    where = " (synthetic)" if "synthetic" in task.info else ""
    print(f"{task.name}{where}: GCN teacher {scores['teacher']:.4f}, MLP alone "
          f"{scores['mlp']:.4f}, distilled MLP {scores['student']:.4f} ({glnn})")
    return scores


if __name__ == "__main__":
    try:
        main()
    except DglkdError as exc:
        sys.exit(f"error: {exc}; or run it on a synthetic dataset of the same shape: "
                 f"{Path(sys.argv[0]).name} --synthetic-like ogbn-arxiv --root data/ogb-like")

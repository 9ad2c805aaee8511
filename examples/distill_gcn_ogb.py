"""Distill a GCN teacher into an MLP on an OGB node-property dataset, in your own loop.

dglkd is used only as a plugin here: the loops are plain PyTorch/DGL; dglkd loads the
dataset and builds the distillation objective (``dglkd.compose``), which returns its named,
weighted terms.

    python examples/distill_gcn_ogb.py --dataset ogbn-arxiv --root data/ogb

(downloads ogbn-arxiv into --root when online; offline, put the extracted dataset there).
"""
from __future__ import annotations

import argparse

import dgl
import torch
import torch.nn.functional as F

import dglkd
import dglkd.data
from dglkd.models import build_model


def fit(model, graph, feat, loss_of_logits, epochs: int, lr: float) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    for _ in range(epochs):
        model.train()
        optimizer.zero_grad()
        loss = loss_of_logits(model(graph, feat))
        loss.backward()
        optimizer.step()


@torch.no_grad()
def test_score(task, model, graph, feat) -> float:
    model.eval()
    pred = model(graph, feat).argmax(-1)
    mask = graph.ndata["test_mask"]
    return task.metric(pred[mask], graph.ndata["label"][mask])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ogbn-arxiv")
    parser.add_argument("--root", default="data/ogb")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    task = dglkd.data.load(args.dataset, root=args.root)
    graph = dgl.add_self_loop(task.graph).to(args.device)
    feat, labels, train = graph.ndata["feat"], graph.ndata["label"], graph.ndata["train_mask"]

    # 1. Teacher: a 3-layer GCN trained on labels, your usual loop.
    teacher = build_model("gcn", task.num_classes, task.num_features, hidden=256, layers=3,
                          norm="batch").to(args.device)
    fit(teacher, graph, feat, lambda out: F.cross_entropy(out[train], labels[train]),
        args.epochs, 0.01)
    teacher.eval()
    with torch.no_grad():
        teacher_logits = teacher(graph, feat)  # soft labels for every node, computed once

    # 2. Student: an MLP on node features alone, trained with dglkd's GLNN objective
    #    (λ = 0: the KL to the teacher's soft labels on every node).
    student = build_model("mlp", task.num_classes, task.num_features, hidden=256, layers=3,
                          dropout=0.2, norm="batch").to(args.device)
    glnn = dglkd.compose(glnn={"lam": 0.0}, context=task.num_classes)

    def distill_loss(out: torch.Tensor) -> torch.Tensor:
        terms = glnn(out, teacher_logits, labels=labels, label_mask=train)  # {"glnn.kd": ...}
        return sum(terms.values())

    fit(student, graph, feat, distill_loss, args.epochs, 0.01)

    scores = {"teacher": test_score(task, teacher, graph, feat),
              "student": test_score(task, student, graph, feat)}
    print(f"{task.name}: GCN teacher {scores['teacher']:.4f}, "
          f"distilled MLP {scores['student']:.4f} ({glnn})")
    return scores


if __name__ == "__main__":
    main()

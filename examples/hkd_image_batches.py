"""Add holistic knowledge distillation (HKD) to your own image training loop.

A plain PyTorch loop over minibatches; dglkd supplies the objective. Per batch the frozen
teacher and the student run on the images (``dglkd.capture`` keeps their pooled features
next to the logits), and ``ce + kd + hkd`` (``dglkd.compose``) returns its weighted terms:
HKD builds a kNN instance graph over the batch for each network, aggregates each image's
embedding over its neighbours with a small GNN, and contrasts the two networks' embeddings
against a memory bank with one row per training image. Bundled MNIST with 1,000 labelled
images here:

    python examples/hkd_image_batches.py --steps 300
"""
from __future__ import annotations

import argparse
from typing import Iterator

import torch
import torch.nn.functional as F

import dglkd
import dglkd.data
from dglkd.data.images import iterate_minibatches
from dglkd.models import build_model


def train_batches(task, batch_size: int, steps: int, generator: torch.Generator,
                  device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``steps`` shuffled training batches ``(images, labels, index)``, epoch after epoch.
    ``index`` is each image's position in the training split: the memory bank's row."""
    done = 0
    while True:
        for batch in iterate_minibatches(task, "train", batch_size, shuffle=True,
                                         generator=generator, device=device, drop_last=True):
            if done == steps:
                return
            done += 1
            yield batch


@torch.no_grad()
def accuracy(model, images, labels) -> float:
    model.eval()
    return (model(images).argmax(-1) == labels).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    task = dglkd.data.load("mnist", train_size=1000, val_size=1000, seed=0)
    train, test = task.splits["train"], task.splits["test"]
    x_test, y_test = task.images[test].to(args.device), task.labels[test].to(args.device)
    teacher = build_model("cnn_small", task.num_classes, task.image_shape).to(args.device)
    student = build_model("cnn_tiny", task.num_classes, task.image_shape).to(args.device)

    # 1. The teacher, trained on labels as usual (yours would be loaded from disk).
    optimizer = torch.optim.Adam(teacher.parameters(), lr=0.003)
    teacher.train()
    for images, labels, _ in train_batches(task, args.batch_size, args.steps, generator,
                                           args.device):
        optimizer.zero_grad()
        F.cross_entropy(teacher(images), labels).backward()
        optimizer.step()
    teacher.eval()

    # 2. The objective: CE + KD + HKD. HKD owns trainable parts (an embedding and a GNN per
    #    network) and a memory bank with one row per training image; context_for probes
    #    the widths of the features it reads on a few images and takes the training
    #    images' labels by position (its negatives are drawn from other classes).
    context = dglkd.context_for(student, teacher, task.images[train[:2]].to(args.device),
                                labels=task.labels[train])
    objective = dglkd.compose(ce=1.0, kd={"weight": 1.0, "temperature": 4.0},
                              hkd={"weight": 1.0}, context=context).to(args.device)
    student_names, teacher_names = objective.required_features()  # ["pool"], ["pool"]
    optimizer = torch.optim.Adam([*student.parameters(), *objective.parameters()], lr=0.01)
    first_loss = last_loss = None
    student.train()
    objective.train()
    for images, labels, index in train_batches(task, args.batch_size, args.steps, generator,
                                               args.device):
        with torch.no_grad():
            teacher_knows = dglkd.capture(teacher, teacher_names, images)
        student_knows = dglkd.capture(student, student_names, images)
        terms = objective(student_knows, teacher_knows, labels=labels, index=index)
        loss = sum(terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first_loss = loss.item() if first_loss is None else first_loss
        last_loss = loss.item()

    scores = {"teacher": accuracy(teacher, x_test, y_test),
              "student": accuracy(student, x_test, y_test),
              "first_loss": first_loss, "last_loss": last_loss}
    print(f"{objective}\nteacher {scores['teacher']:.4f}, HKD+KD student "
          f"{scores['student']:.4f} (test, {len(x_test)} images); "
          f"loss {first_loss:.3f} → {last_loss:.3f}")
    return scores


if __name__ == "__main__":
    main()

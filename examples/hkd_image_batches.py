"""Add holistic knowledge distillation (HKD) to your own image training loop.

Per batch: the frozen teacher and the student run on the images, their pooled features
and logits go to dglkd's HKD method, which builds a kNN instance graph over the batch for
each network, aggregates each image's embedding over its neighbours with a small GNN, and
returns CE + KD + contrastive terms. Bundled MNIST with 1,000 labelled images here:

    python examples/hkd_image_batches.py --steps 300
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import dglkd
from dglkd.data.images import load_mnist
from dglkd.models import FeatureTap, build_model


def batches(num: int, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` random batches of positions 0..num-1 (the memory bank's row ids)."""
    for _ in range(steps):
        yield torch.randperm(num, generator=generator)[:batch_size]


@torch.no_grad()
def accuracy(model, images, labels) -> float:
    model.eval()
    return (model(images).argmax(-1) == labels).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    task = load_mnist(train_size=1000, val_size=1000, seed=0)
    train = task.splits["train"]
    x, y = task.images[train].to(args.device), task.labels[train].to(args.device)
    x_test, y_test = task.images[task.splits["test"]], task.labels[task.splits["test"]]
    teacher = build_model("cnn_small", 10, task.image_shape).to(args.device)
    student = build_model("cnn_tiny", 10, task.image_shape).to(args.device)

    # 1. The teacher, trained on labels as usual (yours would be loaded from disk).
    optimizer = torch.optim.Adam(teacher.parameters(), lr=0.003)
    for rows in batches(len(x), args.batch_size, args.steps, generator):
        teacher.train()
        optimizer.zero_grad()
        F.cross_entropy(teacher(x[rows]), y[rows]).backward()
        optimizer.step()
    teacher.eval()

    # 2. HKD owns trainable parts (an embedding and a GNN per network) and a memory bank
    #    with one row per training image; it needs the widths of the features it reads.
    context = dglkd.MethodContext(
        num_classes=10, num_instances=len(x), instance_labels=y,
        student_shapes={"pool": (student.fc.in_features,)},
        teacher_shapes={"pool": (teacher.fc.in_features,)})
    hkd = dglkd.build_method("hkd", context, kd_weight=1.0, hkd_weight=1.0).to(args.device)
    optimizer = torch.optim.Adam([*student.parameters(), *hkd.parameters()], lr=0.01)
    first_loss = last_loss = None
    with FeatureTap(teacher, ["pool"]) as teacher_tap, FeatureTap(student, ["pool"]) as student_tap:
        for rows in batches(len(x), args.batch_size, args.steps, generator):
            with torch.no_grad():
                teacher_knows = dglkd.Knowledge(teacher(x[rows]), teacher_tap.pop())
            student.train()
            student_knows = dglkd.Knowledge(student(x[rows]), student_tap.pop())
            terms = hkd(student_knows, teacher_knows, labels=y[rows], index=rows)
            loss = sum(terms.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            first_loss = loss.item() if first_loss is None else first_loss
            last_loss = loss.item()

    scores = {"teacher": accuracy(teacher, x_test, y_test),
              "student": accuracy(student, x_test, y_test),
              "first_loss": first_loss, "last_loss": last_loss}
    print(f"{hkd}\nteacher {scores['teacher']:.4f}, HKD+KD student {scores['student']:.4f} "
          f"(test, {len(x_test)} images); loss {first_loss:.3f} → {last_loss:.3f}")
    return scores


if __name__ == "__main__":
    main()

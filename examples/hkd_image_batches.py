"""Add holistic knowledge distillation (HKD) to your own image training loop.

A plain PyTorch loop over minibatches; dglkd supplies the objective. Per batch the frozen
teacher and the student run on the images (``dglkd.capture`` keeps their pooled features
next to the logits), and ``ce + kd + hkd`` (``dglkd.compose``) is stepped once per batch
(``objective.step``): HKD builds a kNN instance graph over the batch for each network,
aggregates each image's embedding over its neighbours with a small GNN, and contrasts the
two networks' embeddings (negatives: the batch's images of other classes). The same tiny
student trained on the labels alone, from the same initial weights on the same batches,
is printed beside it. Bundled MNIST with 1,000 labelled images here:

    python examples/hkd_image_batches.py --steps 300
"""
from __future__ import annotations

import argparse
from typing import Iterator

import torch
from torch import nn

import dglkd
from dglkd.data.images import iterate_minibatches


def train_batches(task, batch_size: int, steps: int, seed: int,
                  device: str) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``steps`` shuffled training batches ``(epoch, images, labels, index)``, epoch after
    epoch, in an order fixed by ``seed``. ``index`` is each image's position in the
    training split: the memory bank's row."""
    generator = torch.Generator().manual_seed(seed)
    done, epoch = 0, 0
    while True:
        for images, labels, index in iterate_minibatches(task, "train", batch_size,
                                                         shuffle=True, generator=generator,
                                                         device=device, drop_last=True):
            if done == steps:
                return
            done += 1
            yield epoch, images, labels, index
        epoch += 1


def fit(model: nn.Module, objective: dglkd.Recipe, batches, steps: int,
        teacher: nn.Module | None = None, lr: float = 0.01) -> list[float]:
    """Train ``model`` by ``objective``, one ``objective.step`` per batch (Adam, the
    learning rate annealed to 0 over ``steps``, a cosine); the losses."""
    student_names, teacher_names = objective.required_features()  # HKD: ["hidden"], ["hidden"]
    optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=lr,
                                 weight_decay=5e-4)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    objective.train()
    losses = []
    for epoch, images, labels, index in batches:
        teacher_knows = None
        if teacher is not None:
            with torch.no_grad():
                teacher_knows = dglkd.capture(teacher, teacher_names, images)
        student_knows = dglkd.capture(model, student_names, images)
        terms = objective.step(student_knows, teacher_knows, model=model, epoch=epoch,
                               optimizer=optimizer, labels=labels, index=index)
        annealing.step()
        losses.append(sum(terms.values()).item())
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return (model(images).argmax(-1) == labels).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per network")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    task = dglkd.data.load("mnist", train_size=1000, val_size=1000, seed=0)
    train, test = task.splits["train"], task.splits["test"]
    x_test, y_test = task.images[test].to(args.device), task.labels[test].to(args.device)

    def batches(seed: int):
        return train_batches(task, args.batch_size, args.steps, seed, args.device)

    def tiny_student() -> nn.Module:  # the same initial weights every time
        torch.manual_seed(args.seed + 1)
        return dglkd.models.build_model("cnn_tiny", task.num_classes,
                                        task.image_shape).to(args.device)

    # 1. The teacher, trained on labels (yours would be loaded from disk).
    teacher = dglkd.models.build_model("cnn_small", task.num_classes,
                                       task.image_shape).to(args.device)
    fit(teacher, dglkd.compose(ce=1.0), batches(args.seed), args.steps, lr=0.003)

    # 2. The student alone: labels only, same steps and batches as the distilled one.
    alone = tiny_student()
    fit(alone, dglkd.compose(ce=1.0), batches(args.seed + 1), args.steps)

    # 3. The distilled student: CE + KD + HKD. HKD owns trainable parts (an embedding and a
    #    GNN per network); context_for probes the widths of the features it reads on a few
    #    images and takes the training images' labels by position (negatives are drawn
    #    from other classes).
    student = tiny_student()
    context = dglkd.context_for(student, teacher, task.images[train[:2]].to(args.device),
                                labels=task.labels[train])
    objective = dglkd.compose(ce=1.0, kd={"weight": 1.0, "temperature": 4.0},
                              hkd={"weight": 1.0, "negatives": "batch"},
                              context=context).to(args.device)
    losses = fit(student, objective, batches(args.seed + 1), args.steps, teacher)

    scores = {"teacher": accuracy(teacher, x_test, y_test),
              "student_alone": accuracy(alone, x_test, y_test),
              "student": accuracy(student, x_test, y_test),
              "first_loss": losses[0], "last_loss": losses[-1]}
    print(f"{objective}\ntest accuracy ({len(x_test)} images, {args.steps} steps each): "
          f"teacher {scores['teacher']:.4f}, student alone {scores['student_alone']:.4f}, "
          f"HKD+KD student {scores['student']:.4f}; HKD+KD loss {losses[0]:.3f} → "
          f"{losses[-1]:.3f}")
    return scores


if __name__ == "__main__":
    main()

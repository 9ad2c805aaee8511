"""Image classification with minibatches: teacher, baseline and distilled student.

:class:`ImageBackend` is the image counterpart of :class:`~dglkd.engine.backends.GraphBackend`:
one epoch = shuffled, augmented minibatches of the training split, each a
:class:`~dglkd.engine.step.Batch` for the one training step. The teacher is a frozen
network run on every batch (its knowledge depends on the random crop), never a cached
table.

The *instances* a method sees are the training images: ``index`` is an image's position in
the training split (what :func:`~dglkd.data.images.iterate_minibatches` yields), so a
memory bank holds one row per training image.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from dglkd.config import Config, ModelConfig, TrainConfig
from dglkd.data.images import iterate_minibatches
from dglkd.data.task import SPLITS, ImageTask, accuracy
from dglkd.engine.cache import TeacherArtifact
from dglkd.engine.step import Batch, median_ms
from dglkd.engine.tasks import load_task
from dglkd.errors import DglkdError
from dglkd.methods import DistillBatch, MethodContext, Recipe, context_for
from dglkd.methods.context import frozen_knowledge
from dglkd.models import build_model

EVAL_BATCH = 256
DEFAULT_BATCH_SIZE = 64
# Train accuracy is a fit diagnostic: a fixed subset keeps big sets (CIFAR: 45,000) cheap.
TRAIN_EVAL_LIMIT = 5000
CACHE_CHECK_IMAGES = 256
PROBE_IMAGES = 2
PROJECTOR_IMAGES = 64
INFERENCE_TARGETS = 1024


@torch.no_grad()
def predict_logits(model: nn.Module, chunks: Iterable[Tensor]) -> Tensor:
    """Logits of ``model`` (eval mode) over image chunks, concatenated."""
    model.eval()
    return torch.cat([model(chunk) for chunk in chunks])


class ImageBackend:
    """Image classification with minibatches (MNIST, digits, CIFAR-10/100)."""

    def __init__(self, config: Config, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.seed = config.seed
        self.task: ImageTask | None = None
        self.eval_index: dict[str, Tensor] = {}

    # -- data ------------------------------------------------------------------------
    def load(self, seed: int) -> None:
        """The task of one run, moved whole to the device (CIFAR-100 is 0.7 GB as float):
        batches are then gathered where they are used, with no copy per step."""
        if self.task is not None and seed == self.seed:
            return
        task = load_task(self.config.data, seed)
        if len(task.splits["val"]) == 0:
            raise DglkdError("data.val_size: 0 leaves no validation images; the best epoch "
                             "is chosen on them, so give at least one")
        self.seed = seed
        self.task = dataclasses.replace(task, images=task.images.to(self.device),
                                        labels=task.labels.to(self.device))
        self.eval_index = {split: task.splits[split].to(self.device) for split in SPLITS}
        self.eval_index["train"] = self.eval_index["train"][:TRAIN_EVAL_LIMIT]

    def images(self, split: str, count: int) -> tuple[Tensor, Tensor]:
        """The first ``count`` images of a split (fewer if it is smaller) and their labels."""
        index = self.task.splits[split][:count].to(self.device)
        return self.task.images[index], self.task.labels[index]

    def batch_size(self, cfg: TrainConfig) -> int:
        size = cfg.batch_size or DEFAULT_BATCH_SIZE
        n_train = len(self.task.splits["train"])
        if n_train < 2:
            raise DglkdError(f"data.train_size: {n_train} training image(s); BatchNorm needs "
                             "batches of two or more, so give at least 2")
        if size < 2 or size > n_train:
            raise DglkdError(f"batch_size: {size} must lie in 2..{n_train} (the training "
                             "images; BatchNorm needs two per batch); set train.batch_size / "
                             "teacher_train.batch_size or data.train_size")
        return size

    def generator(self) -> torch.Generator:
        # Its own generator (saved in checkpoints) orders and augments batches, so a resumed
        # phase sees the batches an uninterrupted one would.
        return torch.Generator().manual_seed(self.seed)

    def batches(self, _model: nn.Module, cfg: TrainConfig, _teacher: Any,
                generator: torch.Generator,
                _with_graph: bool = False) -> Callable[[], Iterator[Batch]]:
        """One epoch of shuffled, augmented training batches; a short last batch is dropped
        so BatchNorm never trains on a single image. The teacher runs on each batch.
        Images have no native graph: methods build theirs (kNN) from the batch."""
        size = self.batch_size(cfg)

        def epoch() -> Iterator[Batch]:
            for images, labels, index in iterate_minibatches(
                    self.task, "train", size, shuffle=True, generator=generator,
                    device=self.device, drop_last=True):
                yield Batch((images,), labels=labels, index=index, teacher_inputs=(images,))

        return epoch

    def probe_batch(self, model: nn.Module, cfg: TrainConfig, teacher: nn.Module | None,
                    names: list[str], with_graph: bool) -> Batch:
        """The first training batch a phase of ``cfg`` makes (the step runs the teacher on
        it): what the start-up check steps on."""
        return next(iter(self.batches(model, cfg, None, self.generator(), with_graph)()))

    # -- models ----------------------------------------------------------------------
    def new_model(self, spec: ModelConfig, role: str) -> nn.Module:
        return build_model(spec.model, self.task.num_classes, self.task.image_shape,
                           key=role, **spec.options()).to(self.device)

    def cache_logits(self, model: nn.Module) -> Tensor:
        images, _ = self.images("val", CACHE_CHECK_IMAGES)
        return predict_logits(model, images.split(EVAL_BATCH))

    def method_context(self, student: nn.Module, teacher: nn.Module | None,
                       artifact: TeacherArtifact | None = None) -> MethodContext:
        probe_images, _ = self.images("train", PROBE_IMAGES)
        train_labels = self.task.labels[self.task.splits["train"].to(self.device)]
        return context_for(student, teacher, (probe_images,), labels=train_labels)

    def probe_context(self, student: nn.Module, teacher: nn.Module | None) -> MethodContext:
        # The context never reads a trained teacher here: the same as the run's.
        return self.method_context(student, teacher)

    def teacher_knowledge(self, teacher: nn.Module, objective: Recipe,
                          artifact: TeacherArtifact | None = None) -> None:
        # The teacher's knowledge depends on each batch's random crop: the step runs the
        # frozen network itself on every batch (no soft labels are stored for images).
        return None

    # -- evaluation ------------------------------------------------------------------
    def logits(self, model: nn.Module, index: Tensor) -> Tensor:
        chunks = (self.task.images[chunk] for chunk in index.split(EVAL_BATCH))
        return predict_logits(model, chunks)

    def evaluate(self, model: nn.Module, _cfg: TrainConfig | None = None) -> dict[str, float]:
        """Accuracy on every split (train: its first ``TRAIN_EVAL_LIMIT`` images), in
        batches whatever the phase's own batches."""
        return {f"{split}_acc": accuracy(self.logits(model, index).argmax(-1),
                                         self.task.labels[index])
                for split, index in self.eval_index.items()}

    def inference(self, teacher: nn.Module, student: nn.Module, seed: int) -> dict[str, Any]:
        """Median time for each network to predict the same random test images."""
        test = self.task.splits["test"]
        generator = torch.Generator().manual_seed(seed)
        targets = test[torch.randperm(len(test), generator=generator)[:INFERENCE_TARGETS]]
        chunks = self.task.images[targets.to(self.device)].split(EVAL_BATCH)
        teacher_ms = median_ms(lambda: predict_logits(teacher, chunks), self.device)
        student_ms = median_ms(lambda: predict_logits(student, chunks), self.device)
        return {"targets": len(targets), "unit": "images", "teacher_ms": teacher_ms,
                "student_ms": student_ms, "speedup": teacher_ms / student_ms}

    # -- TensorBoard projector -------------------------------------------------------
    def projector(self, model: nn.Module, objective: Recipe,
                  teacher: nn.Module | None) -> Callable[[Path | None], None] | None:
        """The end-of-phase hook that writes the objective's embeddings (HKD: holistic
        ones) of the first validation images, labels as metadata, to the phase's
        TensorBoard folder; ``None`` when the projector is switched off."""
        if not self.config.log.embedding_projector:
            return None

        def write(log_dir: Path | None) -> None:
            if log_dir is None:
                return
            embeddings, labels = self.embeddings(model, objective, teacher)
            if not embeddings:
                return
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(log_dir))
            for tag, matrix in embeddings.items():
                writer.add_embedding(matrix.float().cpu(), metadata=labels, tag=tag)
            writer.close()

        return write

    @torch.no_grad()
    def embeddings(self, model: nn.Module, objective: Recipe,
                   teacher: nn.Module | None) -> tuple[dict[str, Tensor], list[int]]:
        """``objective.embeddings`` of the first ``PROJECTOR_IMAGES`` validation images
        (eval mode: no memory update) and their labels."""
        images, labels = self.images("val", PROJECTOR_IMAGES)
        student_names, teacher_names = objective.required_features()
        was_training = objective.training
        objective.eval()
        knowledge = (frozen_knowledge(teacher, teacher_names, images)
                     if teacher is not None else None)
        # Validation images are no training instances: no index.
        batch = DistillBatch(frozen_knowledge(model, student_names, images), knowledge,
                             labels=labels)
        embeddings = objective.embeddings(batch)
        objective.train(was_training)
        return embeddings, labels.tolist()


__all__ = ["ImageBackend", "predict_logits"]

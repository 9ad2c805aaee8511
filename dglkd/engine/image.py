"""Minibatch training of image classifiers: teacher, baseline and distilled student.

:class:`ImageBackend` is the image counterpart of :class:`~dglkd.engine.backends.GraphBackend`:
the same :class:`~dglkd.engine.loop.Phase` / ``fit`` loop (checkpoints, resume, best-val
weights, TensorBoard) drives it, with one epoch = shuffled, augmented minibatches of the
training split. The teacher is a frozen network run on every batch (its knowledge depends
on the random crop), never a cached table.

The *instances* a method sees are the training images: ``index`` is an image's position in
the training split, so a memory bank holds one row per training image (never rows of
validation or test images that would stay random and pose as negatives).
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from dglkd.config import Config, ModelConfig, TrainConfig
from dglkd.data.images import iterate_minibatches
from dglkd.data.task import ImageTask, accuracy
from dglkd.engine.backends import INFERENCE_TARGETS
from dglkd.engine.graph import SPLITS, capture
from dglkd.engine.loop import Phase
from dglkd.engine.optim import make_optimizer, make_scheduler
from dglkd.engine.tasks import load_task
from dglkd.errors import DglkdError
from dglkd.methods import DistillBatch, DistillMethod, Knowledge, MethodContext
from dglkd.models import build_model

EVAL_BATCH = 256
# Train accuracy is a fit diagnostic: a fixed subset keeps big sets (CIFAR: 45,000) cheap.
TRAIN_EVAL_LIMIT = 5000
CACHE_CHECK_IMAGES = 256
PROBE_IMAGES = 2
PROJECTOR_IMAGES = 64
TIMING_REPEATS = 7


# ------------------------------------------------------------------------ forward passes


@torch.no_grad()
def frozen_knowledge(model: nn.Module, images: Tensor, names: list[str]) -> Knowledge:
    """What a network knows about ``images`` in eval mode, without gradients (the teacher)."""
    model.eval()
    return capture(model, names, images)


@torch.no_grad()
def predict_logits(model: nn.Module, chunks: Iterable[Tensor]) -> Tensor:
    """Logits of ``model`` (eval mode) over image chunks, concatenated."""
    model.eval()
    return torch.cat([model(chunk) for chunk in chunks])


def median_ms(run: Callable[[], Any], device: torch.device,
              repeats: int = TIMING_REPEATS) -> float:
    """Median wall time of ``run()`` in ms after one warm-up call; waits for the device
    to finish each call, since GPU kernels return before they are done."""
    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


class TermMeans:
    """Running per-term means of an epoch's loss terms, kept on the device (no per-step sync)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: dict[str, Tensor]) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach()
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        return {name: (total / self.counts[name]).item() for name, total in self.sums.items()}


# ------------------------------------------------------------------------------- backend


class ImageBackend:
    """Image classification with minibatches (MNIST, digits, CIFAR-10/100)."""

    def __init__(self, config: Config, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.seed = config.seed
        self.task: ImageTask | None = None
        self.train_position: Tensor | None = None
        self.eval_index: dict[str, Tensor] = {}

    # -- data ------------------------------------------------------------------------
    def load(self, seed: int) -> None:
        """The task of one run, moved whole to the device (CIFAR-100 is 0.7 GB as float):
        batches are then gathered where they are used, with no copy per step."""
        task = load_task(self.config.data, seed)
        if len(task.splits["val"]) == 0:
            raise DglkdError("data.val_size: 0 leaves no validation images; the best epoch "
                             "is chosen on them, so give at least one")
        self.seed = seed
        self.task = dataclasses.replace(task, images=task.images.to(self.device),
                                        labels=task.labels.to(self.device))
        train = task.splits["train"]
        # Dataset index → position in the training split (-1 for other images).
        position = torch.full((len(task.labels),), -1, dtype=torch.long)
        position[train] = torch.arange(len(train))
        self.train_position = position.to(self.device)
        self.eval_index = {split: task.splits[split].to(self.device) for split in SPLITS}
        self.eval_index["train"] = self.eval_index["train"][:TRAIN_EVAL_LIMIT]

    def images(self, split: str, count: int) -> tuple[Tensor, Tensor]:
        """The first ``count`` images of a split (fewer if it is smaller) and their labels."""
        index = self.task.splits[split][:count].to(self.device)
        return self.task.images[index], self.task.labels[index]

    def train_batches(self, batch_size: int,
                      generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """One epoch of shuffled, augmented training batches ``(images, labels, index)``,
        ``index`` being positions in the training split. A short last batch is dropped so
        BatchNorm never trains on a single image."""
        batches = iterate_minibatches(self.task, "train", batch_size, shuffle=True,
                                      generator=generator, device=self.device, drop_last=True)
        for images, labels, index in batches:
            yield images, labels, self.train_position[index]

    def check_batch_size(self, cfg: TrainConfig) -> None:
        n_train = len(self.task.splits["train"])
        if cfg.batch_size < 2 or cfg.batch_size > n_train:
            raise DglkdError(f"batch_size: {cfg.batch_size} must lie in 2..{n_train} (the "
                             "training images; BatchNorm needs two per batch); set "
                             "train.batch_size / teacher_train.batch_size or data.train_size")

    # -- models ----------------------------------------------------------------------
    def new_model(self, spec: ModelConfig, role: str) -> nn.Module:
        return build_model(spec.model, self.task.num_classes, self.task.image_shape,
                           key=role, **spec.options()).to(self.device)

    def cache_logits(self, model: nn.Module) -> Tensor:
        images, _ = self.images("val", CACHE_CHECK_IMAGES)
        return predict_logits(model, images.split(EVAL_BATCH))

    def method_context(self, student: nn.Module, teacher: nn.Module | None) -> MethodContext:
        models = {"student": student, "teacher": teacher}
        probe_images, _ = self.images("train", PROBE_IMAGES)

        def probe(side: str, name: str) -> tuple[int, ...]:
            model = models.get(side)
            if model is None:
                raise DglkdError(f"{side} feature {name!r}: this phase has no {side} network")
            was_training = model.training
            feature = frozen_knowledge(model, probe_images, [name]).feat(name)
            model.train(was_training)
            return tuple(feature.shape[1:])

        train = self.task.splits["train"]
        return MethodContext(num_classes=self.task.num_classes, num_instances=len(train),
                             instance_labels=self.task.labels.cpu()[train], probe=probe)

    def teacher_knowledge(self, teacher: nn.Module, method: DistillMethod) -> Any:
        # The teacher's knowledge depends on each batch's random crop: the phase runs the
        # frozen network itself on every batch.
        return teacher.eval()

    # -- training --------------------------------------------------------------------
    def phase(self, name: str, model: nn.Module, method: DistillMethod, teacher: Any,
              cfg: TrainConfig, hparams: dict[str, Any]) -> Phase:
        """A minibatch phase; ``teacher`` is the frozen teacher network or ``None``."""
        self.check_batch_size(cfg)
        optimizer = make_optimizer(cfg, [*model.parameters(), *method.parameters()])
        # Its own generator (saved in checkpoints) orders and augments batches, so a resumed
        # phase sees the batches an uninterrupted one would.
        generator = torch.Generator().manual_seed(self.seed)
        student_names, teacher_names = method.required_features()
        teacher = teacher if method.needs_teacher else None

        def train_epoch() -> dict[str, float]:
            model.train()
            method.train()
            terms_seen = TermMeans()
            for images, labels, index in self.train_batches(cfg.batch_size, generator):
                knowledge = (frozen_knowledge(teacher, images, teacher_names)
                             if teacher is not None else None)
                student = capture(model, student_names, images)
                terms = method(student, knowledge, labels=labels, index=index)
                total = sum(terms.values())
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
                terms_seen.add({"total": total, **terms})
            return terms_seen.means()

        return Phase(name, {"model": model, "method": method}, optimizer,
                     make_scheduler(cfg, optimizer), cfg.epochs, cfg.checkpoint_every,
                     train_epoch, lambda: self.evaluate(model), generator=generator,
                     hparams=hparams, on_end=self.projector(model, method, teacher))

    def pretrain(self, method: DistillMethod, teacher: Any, run_dir: Path, name: str) -> None:
        """A method's first stage (MHGD): its own modules trained on the frozen teacher's
        features of the training batches, with an optimizer of ``config.train`` and no
        schedule. Not checkpointed: it is short, and seeded (batches by the run seed, the
        rest by the global seed the caller set), so a resumed run repeats it exactly."""
        if teacher is None:
            raise DglkdError(f"method.name: {method.name!r} has a first stage on the teacher; "
                             "it needs one")
        cfg = self.config.train
        self.check_batch_size(cfg)
        optimizer = make_optimizer(cfg, method.parameters())
        generator = torch.Generator().manual_seed(self.seed)
        teacher_names = method.required_features()[1]
        method.train()
        for _ in range(method.pretrain_epochs()):
            for images, _labels, index in self.train_batches(cfg.batch_size, generator):
                knowledge = frozen_knowledge(teacher, images, teacher_names)
                loss = sum(method.pretrain_terms(knowledge, index).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        method.end_pretraining()

    # -- evaluation ------------------------------------------------------------------
    def logits(self, model: nn.Module, index: Tensor) -> Tensor:
        chunks = (self.task.images[chunk] for chunk in index.split(EVAL_BATCH))
        return predict_logits(model, chunks)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Accuracy on every split (train: its first ``TRAIN_EVAL_LIMIT`` images)."""
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
    def projector(self, model: nn.Module, method: DistillMethod,
                  teacher: nn.Module | None) -> Callable[[Path | None], None] | None:
        """The end-of-phase hook that writes the method's embeddings (HKD: holistic ones) of
        the first validation images, labels as metadata, to the phase's TensorBoard folder;
        ``None`` when the projector is switched off."""
        if not self.config.log.embedding_projector:
            return None

        def write(log_dir: Path | None) -> None:
            if log_dir is None:
                return
            embeddings, labels = self.embeddings(model, method, teacher)
            if not embeddings:
                return
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(log_dir))
            for tag, matrix in embeddings.items():
                writer.add_embedding(matrix.float().cpu(), metadata=labels, tag=tag)
            writer.close()

        return write

    @torch.no_grad()
    def embeddings(self, model: nn.Module, method: DistillMethod,
                   teacher: nn.Module | None) -> tuple[dict[str, Tensor], list[int]]:
        """``method.embeddings`` of the first ``PROJECTOR_IMAGES`` validation images (eval
        mode: no memory update) and their labels."""
        images, labels = self.images("val", PROJECTOR_IMAGES)
        student_names, teacher_names = method.required_features()
        was_training = method.training
        method.eval()
        knowledge = (frozen_knowledge(teacher, images, teacher_names)
                     if teacher is not None else None)
        # Validation images are no training instances: no index.
        batch = DistillBatch(frozen_knowledge(model, images, student_names), knowledge,
                             labels=labels)
        embeddings = method.embeddings(batch)
        method.train(was_training)
        return embeddings, labels.tolist()


__all__ = ["ImageBackend", "capture", "frozen_knowledge", "median_ms", "predict_logits"]

"""The two shapes every dataset is brought into: a graph task and an image task."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

# The splits every task has, in the order results list them.
SPLITS = ("train", "val", "test")


def accuracy(pred: Tensor, labels: Tensor) -> float:
    """Share of ``pred`` (class indices) equal to ``labels``."""
    if labels.numel() == 0:
        return float("nan")
    return (pred == labels).float().mean().item()


@dataclass
class GraphTask:
    """A node-classification task on one graph.

    ``graph.ndata`` holds ``feat`` (float), ``label`` (long) and boolean ``train_mask``,
    ``val_mask``, ``test_mask``. ``observed_mask`` is ``None`` for the transductive setting;
    in the inductive one it marks the nodes teacher and student may see while training
    (``test_mask`` then marks held-out nodes only). ``metric`` scores predicted classes.
    ``teacher_features``: the teacher reads only the first this many columns of ``feat``
    (``None``: all); set when position features are appended for the student alone.
    """

    name: str
    graph: Any
    num_classes: int
    observed_mask: Tensor | None = None
    metric: Callable[[Tensor, Tensor], float] = accuracy
    info: dict[str, Any] = field(default_factory=dict)
    teacher_features: int | None = None

    @property
    def num_features(self) -> int:
        return int(self.graph.ndata["feat"].shape[1])

    def features_for(self, role: str) -> int:
        """How many leading columns of ``feat`` the model of ``role`` reads."""
        if role == "teacher" and self.teacher_features is not None:
            return self.teacher_features
        return self.num_features

    def mask(self, split: str) -> Tensor:
        return self.graph.ndata[f"{split}_mask"]

    def split_sizes(self) -> dict[str, int]:
        return {s: int(self.mask(s).sum()) for s in SPLITS}


@dataclass
class ImageTask:
    """An image-classification task held in memory.

    ``images`` is (N, C, H, W) float, already normalised; ``labels`` is (N,) long;
    ``splits`` maps ``train``/``val``/``test`` to index tensors into ``images``.
    ``augment`` asks the engine for random crop with padding (and flips if ``flip``).
    """

    name: str
    images: Tensor
    labels: Tensor
    num_classes: int
    splits: dict[str, Tensor]
    augment: bool = False
    flip: bool = True
    crop_padding: int = 4
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def split_sizes(self) -> dict[str, int]:
        return {s: int(len(i)) for s, i in self.splits.items()}


def masks_from_indices(num_nodes: int, **indices: Tensor) -> dict[str, Tensor]:
    """Boolean ``{name}_mask`` tensors from index tensors."""
    masks = {}
    for name, idx in indices.items():
        mask = torch.zeros(num_nodes, dtype=torch.bool)
        mask[idx] = True
        masks[f"{name}_mask"] = mask
    return masks

"""What differs between graph tasks and image tasks, behind one small interface: how a
task is loaded, how its models are built and evaluated, what the teacher's knowledge is and
how batches are made. The training step itself is the same for both
(:mod:`dglkd.engine.step`); every graph, in memory or under DistDGL, goes through the one
:class:`~dglkd.engine.graph.GraphBackend`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import Tensor, nn

from dglkd.config import Config, ModelConfig, TrainConfig
from dglkd.engine.cache import TeacherArtifact
from dglkd.engine.step import Batch
from dglkd.methods import MethodContext, Recipe


class Backend(Protocol):
    def load(self, seed: int) -> None: ...
    def new_model(self, spec: ModelConfig, role: str) -> nn.Module: ...
    def cache_logits(self, model: nn.Module) -> Tensor: ...
    def method_context(self, student: nn.Module, teacher: nn.Module | None,
                       artifact: TeacherArtifact | None = None) -> MethodContext: ...
    # The teacher's knowledge of every instance that the objective reads (TeacherKnowledge),
    # or None where the step runs the frozen teacher on each batch (images).
    def teacher_knowledge(self, teacher: nn.Module, objective: Recipe,
                          artifact: TeacherArtifact | None = None) -> Any: ...
    # Graphs in memory only: the config refuses teacher_refine for the others.
    def refined_teacher(self, teacher: nn.Module,
                        artifact: TeacherArtifact | None = None) -> dict[str, float] | None: ...
    def generator(self) -> torch.Generator | None: ...
    # with_graph: the objective reads the relation among a batch's instances (reads_graph)
    def batches(self, model: nn.Module, cfg: TrainConfig, teacher: Any,
                generator: torch.Generator | None,
                with_graph: bool = False) -> Callable[[], Iterator[Batch]]: ...
    # The start-up check: a context and one small batch of a phase's kind, needing no
    # trained teacher (its knowledge of the batch's instances is computed on the spot).
    def probe_context(self, student: nn.Module, teacher: nn.Module | None) -> MethodContext: ...
    def probe_batch(self, model: nn.Module, cfg: TrainConfig, teacher: nn.Module | None,
                    names: list[str], with_graph: bool) -> Batch: ...
    def evaluate(self, model: nn.Module,
                 cfg: TrainConfig | None = None) -> dict[str, float]: ...
    def inference(self, teacher: nn.Module, student: nn.Module, seed: int) -> dict[str, Any]: ...
    def projector(self, model: nn.Module, objective: Recipe,
                  teacher: nn.Module | None) -> Callable[[Path | None], None] | None: ...


def make_backend(config: Config, device: torch.device,
                 say: Callable[[str], None] = print) -> Backend:
    # Imported here: an image run never imports DGL, a graph run never the image loaders.
    if config.data.is_image:
        from dglkd.engine.image import ImageBackend

        return ImageBackend(config, device)
    from dglkd.engine.graph import GraphBackend

    return GraphBackend(config, device, say)

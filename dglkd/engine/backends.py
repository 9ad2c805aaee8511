"""What differs between graph tasks and image tasks, behind one small interface."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from dglkd.config import Config, ModelConfig, TrainConfig
from dglkd.engine.graph import GraphData, graph_phase, inference_ms, inference_targets
from dglkd.engine.loop import Phase
from dglkd.engine.tasks import load_task
from dglkd.errors import DglkdError
from dglkd.methods import DistillMethod, MethodContext
from dglkd.models import build_model

INFERENCE_TARGETS = 1024


class Backend(Protocol):
    def load(self, seed: int) -> None: ...
    def new_model(self, spec: ModelConfig, role: str) -> nn.Module: ...
    def cache_logits(self, model: nn.Module) -> Tensor: ...
    def method_context(self, student: nn.Module, teacher: nn.Module | None) -> MethodContext: ...
    def teacher_knowledge(self, teacher: nn.Module, method: DistillMethod) -> Any: ...
    def phase(self, name: str, model: nn.Module, method: DistillMethod, teacher: Any,
              cfg: TrainConfig, hparams: dict[str, Any]) -> Phase: ...
    def pretrain(self, method: DistillMethod, teacher: Any, run_dir: Path, name: str) -> None: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
    def inference(self, teacher: nn.Module, student: nn.Module, seed: int) -> dict[str, Any]: ...


class GraphBackend:
    """Full-graph node classification (Cora, OGB, npz, a user's graph)."""

    def __init__(self, config: Config, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.data: GraphData | None = None

    def load(self, seed: int) -> None:
        self.data = GraphData(load_task(self.config.data, seed), self.device,
                              self.config.data.self_loop)

    def new_model(self, spec: ModelConfig, role: str) -> nn.Module:
        return build_model(spec.model, self.data.num_classes, self.data.task.num_features,
                           key=role, **spec.options()).to(self.device)

    def cache_logits(self, model: nn.Module) -> Tensor:
        return self.data.knowledge(model, []).logits

    def method_context(self, student: nn.Module, teacher: nn.Module | None) -> MethodContext:
        knowledge = self.data.knowledge(teacher, []) if teacher is not None else None
        return self.data.method_context(student, teacher, knowledge)

    def teacher_knowledge(self, teacher: nn.Module, method: DistillMethod) -> Any:
        # The teacher is frozen and full-batch: its knowledge is computed once per run.
        return self.data.knowledge(teacher, method.required_features()[1])

    def phase(self, name: str, model: nn.Module, method: DistillMethod, teacher: Any,
              cfg: TrainConfig, hparams: dict[str, Any]) -> Phase:
        return graph_phase(name, model, method, self.data, teacher, cfg, hparams)

    def pretrain(self, method: DistillMethod, teacher: Any, run_dir: Path, name: str) -> None:
        raise DglkdError(f"method.name: {method.name!r} has a first stage on image batches "
                         "(stage feature maps); it cannot run on a graph dataset")

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.data.evaluate(model)

    def inference(self, teacher: nn.Module, student: nn.Module, seed: int) -> dict[str, Any]:
        targets = inference_targets(self.data, INFERENCE_TARGETS, seed)
        teacher_ms = inference_ms(teacher, self.data, targets)
        student_ms = inference_ms(student, self.data, targets)
        return {"targets": len(targets), "teacher_ms": teacher_ms, "student_ms": student_ms,
                "speedup": teacher_ms / student_ms}


def make_backend(config: Config, device: torch.device) -> Backend:
    if config.data.is_image:
        from dglkd.engine.image import ImageBackend

        return ImageBackend(config, device)
    return GraphBackend(config, device)

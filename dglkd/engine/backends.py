"""What differs between graph tasks and image tasks, behind one small interface: how a
task is loaded, how its models are built and evaluated, and how its batches are made.
The training step itself is the same for both (:mod:`dglkd.engine.step`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import torch
from torch import Tensor, nn

from dglkd.config import Config, ModelConfig, TrainConfig
from dglkd.engine.parallel import barrier, is_main
from dglkd.engine.step import Batch
from dglkd.engine.tasks import load_task
from dglkd.methods import Knowledge, MethodContext, Recipe
from dglkd.models import build_model

# dglkd.engine.graph needs DGL; image runs have none (dglkd.deps), so GraphBackend imports
# it where it uses it.
if TYPE_CHECKING:
    from dglkd.engine.graph import GraphData

INFERENCE_TARGETS = 1024


class Backend(Protocol):
    # Where the current teacher's soft labels live (set by the experiment with the cache).
    teacher_store: Path | None

    def load(self, seed: int) -> None: ...
    def new_model(self, spec: ModelConfig, role: str) -> nn.Module: ...
    def cache_logits(self, model: nn.Module) -> Tensor: ...
    def method_context(self, student: nn.Module, teacher: nn.Module | None) -> MethodContext: ...
    def teacher_knowledge(self, teacher: nn.Module, objective: Recipe) -> Any: ...
    # Graphs in memory only: the config refuses teacher_refine for the others.
    def refined_teacher(self, teacher: nn.Module) -> dict[str, float] | None: ...
    def generator(self) -> torch.Generator | None: ...
    # with_graph: the objective reads the relation among a batch's instances (reads_graph)
    def batches(self, model: nn.Module, cfg: TrainConfig, teacher: Any,
                generator: torch.Generator | None,
                with_graph: bool = False) -> Callable[[], Iterator[Batch]]: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
    def inference(self, teacher: nn.Module, student: nn.Module, seed: int) -> dict[str, Any]: ...
    def projector(self, model: nn.Module, objective: Recipe,
                  teacher: nn.Module | None) -> Callable[[Path | None], None] | None: ...


class GraphBackend:
    """Node classification on one graph (Cora, OGB, npz, a user's graph).

    A config whose ``train`` or ``teacher_train`` sets ``batch_size`` is a mini-batch
    config: evaluation and the teacher's knowledge of every node are then computed layer
    by layer over node batches of ``eval_batch_size``, never the whole graph at once.
    """

    def __init__(self, config: Config, device: torch.device,
                 say: Callable[[str], None] = print) -> None:
        self.config = config
        self.device = device
        self.say = say
        self.seed = config.seed
        self.data: GraphData | None = None
        self.teacher_store: Path | None = None
        minibatch = config.train.batch_size or config.teacher_train.batch_size
        self.eval_batch = config.train.eval_batch_size if minibatch else None

    def load(self, seed: int) -> None:
        from dglkd.engine.graph import GraphData

        self.seed = seed
        self.data = GraphData(load_task(self.config.data, seed), self.device,
                              self.config.data.self_loop)
        self.data.show_progress = self.config.log.progress
        self._refined: tuple[nn.Module, Tensor] | None = None

    def new_model(self, spec: ModelConfig, role: str) -> nn.Module:
        task = self.data.task
        return build_model(spec.model, self.data.num_classes, task.num_features, key=role,
                           input_columns=task.features_for(role),
                           **spec.options()).to(self.device)

    def cache_logits(self, model: nn.Module) -> Tensor:
        if self.eval_batch is not None:  # at scale a seeded sample of nodes identifies it
            return self.data.sample_logits(model)
        return self.data.knowledge(model, []).logits

    def method_context(self, student: nn.Module, teacher: nn.Module | None) -> MethodContext:
        predictions = None
        if self.eval_batch is not None and teacher is not None:
            predictions = self._knowledge(teacher, []).predictions()
        return self.data.method_context(student, teacher, predictions)

    def teacher_knowledge(self, teacher: nn.Module, objective: Recipe) -> Any:
        # The teacher is frozen: its knowledge of every node is computed once per phase
        # (at scale, once per cached teacher, into memory-mapped soft labels).
        from dglkd.engine.graph import StoredKnowledge

        if not objective.needs_teacher:
            return None
        names = objective.required_features()[1]
        knowledge = self._outputs(teacher, names)
        refined = self._refined_logits(teacher, knowledge)
        if refined is None:
            return knowledge
        if isinstance(knowledge, StoredKnowledge):
            return knowledge.with_logits(refined)
        return dataclasses.replace(knowledge, logits=refined)

    def refined_teacher(self, teacher: nn.Module) -> dict[str, float] | None:
        """How the teacher's refined predictions (``teacher_refine``) score, or None
        without refinement: on the training graph's nodes, what every student learns
        from. Inductively the test nodes are hidden from that graph; their score is then
        the refinement over the whole graph at test time (hidden nodes and their edges
        revealed, as when the teacher itself is evaluated; still training labels only)."""
        refined = self._refined_logits(teacher)
        if refined is None:
            return None
        scores = self.data.split_scores(self.data.train_graph, refined)
        if self.data.task.observed_mask is not None:
            whole = self.data.refined_logits(self.data.eval_logits(teacher, self.eval_batch),
                                             self.config.teacher_refine, whole_graph=True)
            scores["test_acc"] = self.data.split_scores(self.data.eval_graph, whole)["test_acc"]
        return {**scores, "test_acc_last": float("nan")}  # refined once, best-val teacher

    def _refined_logits(self, teacher: nn.Module, knowledge: Any = None) -> Tensor | None:
        # Refined once per teacher: every student phase of the seed reuses them.
        from dglkd.engine.graph import StoredKnowledge

        params = self.config.teacher_refine
        if params is None:
            return None
        if self._refined is None or self._refined[0] is not teacher:
            if knowledge is None:
                knowledge = self._outputs(teacher, [])
            logits = (knowledge.all_logits() if isinstance(knowledge, StoredKnowledge)
                      else knowledge.logits)
            self._refined = (teacher, self.data.refined_logits(logits, params))
        return self._refined[1]

    def _outputs(self, teacher: nn.Module, names: list[str]) -> Any:
        """The teacher's logits and ``names`` features of every training-graph node: in
        memory for a full-batch run, stored (memory-mapped) for a mini-batch one."""
        if self.eval_batch is None:
            return self.data.knowledge(teacher, names)
        return self._knowledge(teacher, names)

    def _knowledge(self, teacher: nn.Module, names: list[str]) -> Any:
        # Computing it or reading it from the cache must leave the student's random
        # stream alone, so a run from a warm cache ends exactly like a cold one.
        with torch.random.fork_rng(devices=[]):
            if not is_main():  # rank 0 writes the soft labels; the others read them
                barrier()
            knowledge = self._stored_or_computed(teacher, names)
            if is_main():
                barrier()
            return knowledge

    def _stored_or_computed(self, teacher: nn.Module, names: list[str]) -> Any:
        if self.teacher_store is None:
            return self.data.knowledge(teacher, names, self.eval_batch)
        folder = self.teacher_store.with_name(
            f"{self.teacher_store.name}-{'+'.join(['logits', *names])}")
        return self.data.stored_knowledge(teacher, names, folder, self.eval_batch,
                                          self.config.soft_label_dtype, self.say)

    def generator(self) -> torch.Generator:
        # Orders node batches; saved in checkpoints so a resumed phase sees the same ones.
        return torch.Generator().manual_seed(self.seed)

    def batches(self, model: nn.Module, cfg: TrainConfig, teacher: Knowledge | None,
                generator: torch.Generator,
                with_graph: bool = False) -> Callable[[], Iterator[Batch]]:
        """The whole graph as one batch, or mini-batches when ``cfg.batch_size`` is set;
        ``with_graph``: each batch carries the graph among its nodes."""
        from dglkd.engine.graph import minibatches

        if cfg.batch_size is not None:
            return minibatches(self.data, model, cfg, teacher, generator, with_graph)
        batch = self.data.full_batch(teacher, with_graph)
        return lambda: iter([batch])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.data.evaluate(model, self.eval_batch)

    def inference(self, teacher: nn.Module, student: nn.Module, seed: int) -> dict[str, Any]:
        from dglkd.engine.graph import inference_ms, inference_targets

        targets = inference_targets(self.data, INFERENCE_TARGETS, seed)
        teacher_ms = inference_ms(teacher, self.data, targets)
        student_ms = inference_ms(student, self.data, targets)
        return {"targets": len(targets), "teacher_ms": teacher_ms, "student_ms": student_ms,
                "speedup": teacher_ms / student_ms}

    def projector(self, model: nn.Module, objective: Recipe,
                  teacher: nn.Module | None) -> None:
        return None


def make_backend(config: Config, device: torch.device,
                 say: Callable[[str], None] = print) -> Backend:
    if config.data.is_image:
        from dglkd.engine.image import ImageBackend

        return ImageBackend(config, device)
    if config.data.name == "dist":  # a partitioned graph served by DistDGL
        from dglkd.engine.distgraph import DistGraphBackend

        return DistGraphBackend(config, device, say)
    return GraphBackend(config, device, say)

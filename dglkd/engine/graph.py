"""Full-graph training of node classifiers: teacher, baseline and distilled student."""
from __future__ import annotations

import statistics
import time
from typing import Any

import dgl
import torch
from torch import Tensor, nn

from dglkd.config import TrainConfig
from dglkd.data.task import GraphTask
from dglkd.engine.loop import Phase
from dglkd.engine.optim import make_optimizer, make_scheduler
from dglkd.methods import DistillMethod, Knowledge, MethodContext
from dglkd.models import FeatureTap

SPLITS = ("train", "val", "test")


def capture(model: nn.Module, names: list[str], *inputs: Any) -> Knowledge:
    """One forward pass ``model(*inputs)``, keeping the named hidden features."""
    with FeatureTap(model, names) as tap:
        logits = model(*inputs)
        return Knowledge(logits, tap.pop())


class GraphData:
    """A graph task on a device.

    ``train_graph`` is what teacher and student see while training: the whole graph
    (transductive) or the subgraph of observed nodes (inductive); evaluation always runs on
    the whole graph.
    """

    def __init__(self, task: GraphTask, device: torch.device, self_loop: bool) -> None:
        graph = task.graph
        if self_loop:
            graph = dgl.add_self_loop(dgl.remove_self_loop(graph))
        self.task = task
        self.eval_graph = graph.to(device)
        if task.observed_mask is None:
            self.train_graph = self.eval_graph
        else:
            self.train_graph = dgl.node_subgraph(graph, task.observed_mask).to(device)
        self.feat = self.train_graph.ndata["feat"]
        self.labels = self.train_graph.ndata["label"]
        self.train_mask = self.train_graph.ndata["train_mask"]
        self.node_ids = torch.arange(self.train_graph.num_nodes(), device=device)

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        pred = model(self.eval_graph, self.eval_graph.ndata["feat"]).argmax(-1)
        labels = self.eval_graph.ndata["label"]
        return {f"{split}_acc": self.task.metric(pred[mask], labels[mask])
                for split in SPLITS
                for mask in [self.eval_graph.ndata[f"{split}_mask"]]}

    @torch.no_grad()
    def knowledge(self, model: nn.Module, names: list[str]) -> Knowledge:
        model.eval()
        return capture(model, names, self.train_graph, self.feat)

    def instance_labels(self, teacher: Knowledge | None) -> Tensor:
        """True labels of training nodes, the teacher's predictions elsewhere (-1 without one)."""
        if teacher is None:
            return torch.where(self.train_mask, self.labels, -1)
        return torch.where(self.train_mask, self.labels, teacher.logits.argmax(-1))

    def method_context(self, student: nn.Module, teacher: nn.Module | None,
                       teacher_knowledge: Knowledge | None) -> MethodContext:
        models = {"student": student, "teacher": teacher}

        @torch.no_grad()
        def probe(side: str, name: str) -> tuple[int, ...]:
            model = models[side]
            was_training = model.training
            feature = self.knowledge(model, [name]).feat(name)
            model.train(was_training)
            return tuple(feature.shape[1:])

        return MethodContext(num_classes=self.num_classes,
                             num_instances=self.train_graph.num_nodes(),
                             instance_labels=self.instance_labels(teacher_knowledge),
                             probe=probe)


def graph_phase(name: str, model: nn.Module, method: DistillMethod, data: GraphData,
                teacher: Knowledge | None, cfg: TrainConfig,
                hparams: dict[str, Any]) -> Phase:
    """A full-batch phase: every epoch is one step on the whole training graph."""
    optimizer = make_optimizer(cfg, [*model.parameters(), *method.parameters()])
    student_names, _ = method.required_features()

    def train_epoch() -> dict[str, float]:
        model.train()
        method.train()
        optimizer.zero_grad()
        student = capture(model, student_names, data.train_graph, data.feat)
        terms = method(student, teacher, labels=data.labels, label_mask=data.train_mask,
                       graph=data.train_graph, index=data.node_ids)
        total = sum(terms.values())
        total.backward()
        optimizer.step()
        return {"total": total.item(), **{k: v.item() for k, v in terms.items()}}

    return Phase(name, {"model": model, "method": method}, optimizer,
                 make_scheduler(cfg, optimizer), cfg.epochs, cfg.checkpoint_every,
                 train_epoch, lambda: data.evaluate(model), hparams=hparams)


@torch.no_grad()
def inference_ms(model: nn.Module, data: GraphData, targets: Tensor, repeats: int = 7) -> float:
    """Median time to predict ``targets``: a GNN gathers its multi-hop in-neighbourhood
    first, a graph-free model reads the targets' features only."""
    model.eval()
    graph = data.eval_graph

    def predict() -> Tensor:
        if not getattr(model, "uses_graph", True):
            return model(None, graph.ndata["feat"][targets])
        hops = getattr(model, "num_hops", 2)
        sub, inverse = dgl.khop_in_subgraph(graph, targets, k=hops)
        return model(sub, sub.ndata["feat"])[inverse]

    predict()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def inference_targets(data: GraphData, count: int, seed: int) -> Tensor:
    """``count`` random nodes (all if fewer), the same for teacher and student."""
    generator = torch.Generator().manual_seed(seed)
    nodes = torch.randperm(data.eval_graph.num_nodes(), generator=generator)[:count]
    return nodes.to(data.eval_graph.device)

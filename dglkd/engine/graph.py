"""Node classification on one graph: the data on a device, its batches and evaluation."""
from __future__ import annotations


import sys
from pathlib import Path
from typing import Callable, Iterator

import dgl
import numpy as np
import torch
from torch import Tensor, nn

from dglkd.config import TrainConfig
from dglkd.data.task import GraphTask
from dglkd.engine.parallel import node_loader, world
from dglkd.engine.softlabels import SoftLabels, SoftLabelWriter, check_sample, open_soft_labels
from dglkd.engine.step import Batch, median_ms, no_instance_graph
from dglkd.progress import progress
from dglkd.errors import DglkdError
from dglkd.graphs.propagation import CorrectSmoothParams, correct_and_smooth
from dglkd.methods import Knowledge, MethodContext, context_for
from dglkd.methods.context import frozen_knowledge
from dglkd.models.gnn import OUT_DEGREES, attach_out_degrees, layerwise_inference

SPLITS = ("train", "val", "test")
CHECK_NODES = 256


class StoredKnowledge:
    """The teacher's knowledge of every training node, held in memory-mapped soft-label
    files (:mod:`dglkd.engine.softlabels`): a batch reads its own rows, as float32 on the
    device, and nothing else."""

    def __init__(self, store: SoftLabels, device: torch.device,
                 logits: Tensor | None = None) -> None:
        self.store = store
        self.device = device
        self.logits = logits  # every node's, in memory, in place of the stored ones

    def rows(self, ids: Tensor) -> Knowledge:
        feats = {name: self.store.rows(name, ids).to(self.device)
                 for name in self.store.names if name != "logits"}
        logits = (self.logits[ids.to(self.logits.device)] if self.logits is not None
                  else self.store.rows("logits", ids))
        return Knowledge(logits.to(self.device), feats)

    def all_logits(self, chunk: int = 1 << 18) -> Tensor:
        """Every node's logits as float32, read chunk by chunk."""
        if self.logits is not None:
            return self.logits
        logits = self.store.tensor("logits")
        return torch.cat([logits[i:i + chunk].float() for i in range(0, len(logits), chunk)])

    def with_logits(self, logits: Tensor) -> "StoredKnowledge":
        """The same stored features with ``logits`` (every node's) instead of the stored."""
        return StoredKnowledge(self.store, self.device, logits)

    def predictions(self, chunk: int = 1 << 18) -> Tensor:
        """The teacher's predicted class of every node, read chunk by chunk."""
        logits = self.store.tensor("logits") if self.logits is None else self.logits
        return torch.cat([logits[i:i + chunk].float().argmax(-1)
                          for i in range(0, len(logits), chunk)])


class GraphData:
    """A graph task on a device.

    ``train_graph`` is what teacher and student see while training: the whole graph
    (transductive) or the subgraph of observed nodes (inductive); evaluation always runs on
    the whole graph. The training instances are the nodes of ``train_graph``: a node's
    ``index`` is its node id there.
    """

    def __init__(self, task: GraphTask, device: torch.device, self_loop: bool) -> None:
        graph = task.graph
        if not bool(graph.ndata["val_mask"].any()):
            raise DglkdError(f"data: {task.name!r} has no validation nodes (val_mask is empty, "
                             "or val_per_class: 0); the best epoch is chosen on them")
        if self_loop:
            graph = dgl.add_self_loop(dgl.remove_self_loop(graph))
        self.task = task
        self.device = device
        self.eval_graph = graph.to(device)
        if task.observed_mask is None:
            self.train_graph = self.eval_graph
        else:
            self.train_graph = dgl.node_subgraph(graph, task.observed_mask).to(device)
        self.feat = self.train_graph.ndata["feat"]
        self.labels = self.train_graph.ndata["label"]
        self.train_mask = self.train_graph.ndata["train_mask"]
        self.node_ids = torch.arange(self.train_graph.num_nodes(), device=device)
        self.show_progress = False

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    def prepare_for(self, model: nn.Module) -> None:
        """GCN on sampled blocks normalises by the whole graph's out-degrees (see
        ``attach_out_degrees``: the same logits as on the whole graph); stored once, and
        only for models that read them (on ogbn-products it costs a CSR copy)."""
        if getattr(model, "source_degree_norm", False) and OUT_DEGREES not in self.train_graph.ndata:
            attach_out_degrees(self.train_graph)

    def evaluate(self, model: nn.Module, batch_size: int | None = None) -> dict[str, float]:
        """Accuracy per split: one full-graph pass, or layer by layer over node batches of
        ``batch_size`` (the same logits, without every layer's activations at once)."""
        return self.split_scores(self.eval_graph, self.eval_logits(model, batch_size))

    @torch.no_grad()
    def eval_logits(self, model: nn.Module, batch_size: int | None = None) -> Tensor:
        """``model``'s logits of every node of the whole graph (hidden ones included)."""
        graph = self.eval_graph
        if batch_size is None:
            model.eval()
            return model(graph, graph.ndata["feat"])
        logits, _ = layerwise_inference(model, graph, graph.ndata["feat"], batch_size,
                                        device=self.device, progress=self.show_progress)
        return logits

    def split_scores(self, graph: dgl.DGLGraph, logits: Tensor) -> dict[str, float]:
        """Accuracy per split of ``graph``'s nodes from their ``logits`` (NaN for a split
        with no node there: the hidden test nodes are not in the inductive training graph)."""
        pred = logits.argmax(-1).to(graph.device)
        labels = graph.ndata["label"]
        return {f"{split}_acc": (self.task.metric(pred[mask], labels[mask])
                                 if bool(mask.any()) else float("nan"))
                for split in SPLITS
                for mask in [graph.ndata[f"{split}_mask"]]}

    def knowledge(self, model: nn.Module, names: list[str],
                  batch_size: int | None = None) -> Knowledge:
        """What ``model`` (eval mode) knows about every training node: one full-graph pass,
        or layer by layer over node batches of ``batch_size``."""
        if batch_size is None:
            return frozen_knowledge(model, names, self.train_graph, self.feat)
        logits, feats = layerwise_inference(model, self.train_graph, self.feat, batch_size,
                                            names=[n for n in names if n != "logits"],
                                            device=self.device, progress=self.show_progress)
        return Knowledge(logits.to(self.device), {k: v.to(self.device) for k, v in feats.items()})

    def refined_logits(self, logits: Tensor, params: CorrectSmoothParams,
                       whole_graph: bool = False) -> Tensor:
        """``logits`` of every training-graph node (``whole_graph``: of every node)
        refined by Correct and Smooth over that graph with the training labels, as
        log-probabilities (the refined probabilities at temperature 1; a zero probability
        becomes float32's tiniest)."""
        graph = self.eval_graph if whole_graph else self.train_graph
        probs = correct_and_smooth(graph, logits.float().softmax(-1), graph.ndata["label"],
                                   graph.ndata["train_mask"], params)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def method_context(self, student: nn.Module, teacher: nn.Module | None,
                       teacher_predictions: Tensor | None = None) -> MethodContext:
        """Shapes probed on the whole training graph, or, with ``teacher_predictions``
        given (mini-batch scale), on the subgraph of the first few nodes only."""
        inputs = (self.train_graph, self.feat)
        if teacher_predictions is not None:
            sample = dgl.node_subgraph(self.train_graph, self.node_ids[:CHECK_NODES])
            inputs = (sample, sample.ndata["feat"])
        return context_for(student, teacher, inputs, labels=self.labels,
                           train_mask=self.train_mask, teacher_predictions=teacher_predictions)

    def exact_logits(self, model: nn.Module, ids: Tensor) -> Tensor:
        """``model``'s logits of nodes ``ids`` from their whole neighbourhoods (full
        blocks): what a full-graph pass gives those rows, at the cost of their hops."""
        if not getattr(model, "uses_graph", True):
            return frozen_knowledge(model, [], None, self.feat[ids]).logits
        self.prepare_for(model)
        sampler = dgl.dataloading.MultiLayerFullNeighborSampler(model.num_hops)
        input_nodes, _, blocks = sampler.sample_blocks(self.train_graph, ids)
        return frozen_knowledge(model, [], blocks, self.feat[input_nodes]).logits

    def sample_logits(self, model: nn.Module, seed: int = 0) -> Tensor:
        """Exact logits of a seeded sample of nodes: a cheap fingerprint of a model."""
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randperm(len(self.node_ids), generator=generator)[:CHECK_NODES]
        return self.exact_logits(model, ids.sort().values.to(self.device))

    def stored_knowledge(self, model: nn.Module, names: list[str], folder: Path,
                         batch_size: int, dtype: str, say: Callable[[str], None]
                         ) -> StoredKnowledge:
        """``model``'s knowledge of every training node from the soft-label files in
        ``folder``; computed layer by layer and written there (once) when they are missing
        or fail the check of a seeded sample of nodes."""
        try:
            # Every byte against the header's SHA-256 (about a second per GB): the sample
            # check below would miss a damaged row outside its sample.
            store = open_soft_labels(folder, verify="sha256")
        except DglkdError as exc:
            say(f"soft labels: {exc}; they will be recomputed")
            store = None
        if store is not None and not check_sample(
                store, lambda ids: self.exact_logits(model, ids.to(self.device)),
                count=CHECK_NODES):
            say(f"soft labels {folder}: a sample of nodes does not reproduce; recomputing")
            store = None
        if store is None:
            store = self._write_knowledge(model, names, folder, batch_size, dtype)
        return StoredKnowledge(store, self.device)

    def _write_knowledge(self, model: nn.Module, names: list[str], folder: Path,
                         batch_size: int, dtype: str) -> SoftLabels:
        hidden = [name for name in names if name != "logits"]
        logits, feats = layerwise_inference(model, self.train_graph, self.feat, batch_size,
                                            names=hidden, device=self.device,
                                            progress=self.show_progress)
        arrays = {"logits": logits, **{name: feats[name].flatten(1) for name in hidden}}
        with SoftLabelWriter(folder, {k: tuple(v.shape) for k, v in arrays.items()},
                             dtype=dtype) as out:
            for name, values in arrays.items():
                out.write(name, slice(None), values)
        return open_soft_labels(folder)

    def full_batch(self, teacher: Knowledge | None, with_graph: bool = False) -> Batch:
        """The whole training graph as one batch: labels on training nodes, the teacher's
        knowledge of every node and, ``with_graph``, the graph itself as the relation
        among the instances."""
        return Batch((self.train_graph, self.feat), labels=self.labels,
                     label_mask=self.train_mask, index=self.node_ids,
                     graph=self.train_graph if with_graph else None, teacher=teacher)

    def seeds(self, teacher: Knowledge | None) -> Tensor:
        """The nodes a phase iterates: every training-graph node when there is teacher
        knowledge to distil, else the labelled ones."""
        return self.node_ids if teacher is not None else self.node_ids[self.train_mask]

    def node_batch(self, ids: Tensor, teacher: Knowledge | None) -> Batch:
        """Nodes ``ids`` for a graph-free student: their features, labels and teacher rows."""
        return Batch((None, self.feat[ids]), labels=self.labels[ids],
                     label_mask=self.train_mask[ids], index=ids,
                     teacher=teacher.rows(ids) if teacher is not None else None)

    def block_batch(self, seeds: Tensor, blocks: list, teacher: Knowledge | None,
                    with_graph: bool = False) -> Batch:
        """Sampled blocks around ``seeds``; ``with_graph``, the relation among the batch's
        instances: the training graph's subgraph induced on them (a pass over their
        edges per batch, so only for objectives that read it)."""
        return Batch((blocks, blocks[0].srcdata["feat"]), labels=self.labels[seeds],
                     label_mask=self.train_mask[seeds], index=seeds,
                     graph=dgl.node_subgraph(self.train_graph, seeds) if with_graph else None,
                     teacher=teacher.rows(seeds) if teacher is not None else None,
                     instances=len(seeds))


def minibatches(data: GraphData, model: nn.Module, cfg: TrainConfig,
                teacher: Knowledge | None, generator: torch.Generator,
                with_graph: bool = False) -> Callable[[], Iterator[Batch]]:
    """One epoch of shuffled seed batches of ``cfg.batch_size``: node batches for a
    graph-free model (no graph is touched), else blocks from DGL's ``NeighborSampler``
    with ``cfg.fanouts`` (all neighbours where absent) through DGL's ``DataLoader``;
    ``with_graph``, each block batch carries the subgraph induced on its seeds.
    With several ranks each gets its own share of the seeds, every epoch, in batches of
    ``batch_size / ranks``: ``batch_size`` stays the global batch, so ``--nproc`` changes
    the speed and not the optimisation (one DDP step = one step of one process).

    Every epoch draws its shuffling seed from ``generator``, which checkpoints hold, so a
    resumed epoch sees the batches an uninterrupted one would.
    """
    seeds = data.seeds(teacher)
    rank, ranks, _ = world()
    batch_size = -(-cfg.batch_size // ranks)
    if not getattr(model, "uses_graph", True):
        if with_graph:
            raise no_instance_graph("node batches (a graph-free student's)",
                                    ", or train full-batch")

        def node_epoch() -> Iterator[Batch]:
            sampler = torch.utils.data.DistributedSampler(
                seeds, num_replicas=ranks, rank=rank, shuffle=True, seed=_draw(generator))
            loader = torch.utils.data.DataLoader(seeds, batch_size=batch_size,
                                                 sampler=sampler)
            return (data.node_batch(ids, teacher) for ids in loader)

        return node_epoch
    data.prepare_for(model)
    fanouts = cfg.fanouts or [-1] * model.num_hops
    sampler = dgl.dataloading.NeighborSampler(fanouts)

    def block_epoch() -> Iterator[Batch]:
        # DGL's sampler and DataLoader shuffle draw from DGL's and numpy's generators,
        # which are seeded here from the phase's generator.
        seed = _draw(generator)
        dgl.seed(seed)
        np.random.seed(seed)
        loader = node_loader(data.train_graph, seeds, sampler, batch_size, shuffle=True,
                             num_workers=cfg.num_workers, device=data.device, seed=seed)
        if data.show_progress and sys.stderr.isatty():
            # only then: tqdm starts the loader once more when it is made (a reshuffle)
            loader = progress(loader, True, "batches", len(loader), 0)
        for _input_nodes, output_nodes, blocks in loader:
            yield data.block_batch(output_nodes, blocks, teacher, with_graph)

    return block_epoch


def _draw(generator: torch.Generator) -> int:
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


@torch.no_grad()
def inference_ms(model: nn.Module, data: GraphData, targets: Tensor) -> float:
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

    return median_ms(predict, data.device)


def inference_targets(data: GraphData, count: int, seed: int) -> Tensor:
    """``count`` random nodes (all if fewer), the same for teacher and student."""
    generator = torch.Generator().manual_seed(seed)
    nodes = torch.randperm(data.eval_graph.num_nodes(), generator=generator)[:count]
    return nodes.to(data.eval_graph.device)


__all__ = ["GraphData", "inference_ms", "inference_targets", "minibatches", "SPLITS"]

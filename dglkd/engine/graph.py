"""Node classification on one graph, wherever it lives: the one graph backend.

The graph is a :class:`~dglkd.engine.stores.GraphStore`: a ``DGLGraph`` in memory (Cora,
OGB, npz, a user's graph) or DistDGL's partitioned graph (``data.name: dist``). Everything
here is written once over the store: the teacher's knowledge of every node, epoch
batching (the whole graph as one batch, node batches of a graph-free model, sampled
blocks), evaluation and inference timing.

``train`` is what teacher and student see while training: the whole graph
(transductive) or the subgraph of observed nodes (inductive); evaluation runs on the
whole graph (``eval``). The training instances are the nodes of ``train``: a node's
``index`` is its node id there.

A config whose ``train`` or ``teacher_train`` sets ``batch_size`` is a mini-batch config:
evaluation and the teacher's knowledge of every node are then computed layer by layer
over node batches of ``eval_batch_size``, never every layer of the whole graph at once,
and the teacher's knowledge is kept in memory-mapped soft-label files beside its cache
entry (in ``DistTensor`` s under DistDGL, recomputed each run).
"""
from __future__ import annotations

import math
import sys
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from dglkd import deps
from dglkd.config import Config, ModelConfig, TrainConfig
from dglkd.data.task import SPLITS, accuracy
from dglkd.engine.cache import TeacherArtifact
from dglkd.engine.inference import (eval_mode, exact_knowledge, exact_logits, latency_ms,
                                   layerwise)
from dglkd.engine.knowledge import TeacherKnowledge
from dglkd.engine.parallel import barrier, is_main, world
from dglkd.engine.softlabels import SoftLabels, SoftLabelWriter, check_sample, open_soft_labels
from dglkd.engine.step import Batch, no_instance_graph
from dglkd.engine.stores import GraphStore, MemoryStore, Sampled, all_blocks
from dglkd.engine.tasks import load_task
from dglkd.errors import DglkdError
from dglkd.methods import Knowledge, MethodContext, Recipe, context_for
from dglkd.methods.context import frozen_knowledge
from dglkd.models import build_model
from dglkd.models.contract import NodeModel, node_model
from dglkd.progress import progress

dgl = deps.dgl("the graph engine")

# Nodes whose exact logits fingerprint a model (the cache check, the soft-label check)
# and on whose subgraph a method's feature shapes are probed.
CHECK_NODES = 256
INFERENCE_TARGETS = 1024
# Seed nodes of the start-up check's one mini-batch.
PROBE_NODES = 64


def draw_seed(generator: torch.Generator) -> int:
    """A seed for one epoch's shuffling and sampling, drawn from the phase's generator
    (which checkpoints hold, so a resumed epoch sees the batches an uninterrupted one would)."""
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


class GraphBackend:
    """The engine's backend for node classification (see the module docstring)."""

    def __init__(self, config: Config, device: torch.device,
                 say: Callable[[str], None] = print) -> None:
        self.config = config
        self.device = device
        self.say = say
        self.seed = config.seed
        self.minibatch = (config.train.batch_size is not None
                          or config.teacher_train.batch_size is not None)
        self.eval_batch = config.train.eval_batch_size
        self.train: Any = None
        self.eval: Any = None
        self.metric = accuracy
        # per seed, by teacher model: its knowledge by feature names, its refined logits
        self._knowledge: dict[tuple, TeacherKnowledge] = {}
        self._refined: dict[nn.Module, Tensor] = {}
        self._truth: dict[int, dict[str, Tensor]] = {}  # labels and masks, by id(store)

    # -- data ----------------------------------------------------------------------------
    def load(self, seed: int) -> None:
        """The task of ``seed`` (its split, for random splits); loaded once per seed."""
        if self.train is not None and seed == self.seed:
            return
        self.seed = seed
        self._knowledge, self._refined = {}, {}
        if self.config.data.name == "dist":
            if self.train is None:  # the split is fixed by the partitions: load once
                self._load_dist()
            return
        task = load_task(self.config.data, seed)
        graph = task.graph
        if not bool(graph.ndata["val_mask"].any()):
            raise DglkdError(f"data: {task.name!r} has no validation nodes (val_mask is empty, "
                             "or val_per_class: 0); the best epoch is chosen on them")
        if self.config.data.self_loop:
            graph = dgl.add_self_loop(dgl.remove_self_loop(graph))
        self.eval = MemoryStore(graph, self.device)
        self.train = (self.eval if task.observed_mask is None
                      else MemoryStore(dgl.node_subgraph(graph, task.observed_mask), self.device))
        self.metric = task.metric
        self.num_classes = task.num_classes
        self.teacher_columns = task.teacher_features
        self._truth = {}

    def _load_dist(self) -> None:
        from dglkd.engine.diststore import DistStore, dist_mode

        store = DistStore(self.config, self.device)
        self.train = self.eval = store
        self.num_classes = int(store.meta["num_classes"])
        # partitions of a graph with position features for the student alone record how
        # many content columns the teacher reads
        self.teacher_columns = store.meta.get("teacher_features")
        self.say(f"dist: graph {store.name!r} ({store.num_nodes} nodes, "
                 f"{store.meta['num_parts']} partitions, mode {dist_mode()}); "
                 f"{world().world_size} trainer(s)")

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, MemoryStore)

    def new_model(self, spec: ModelConfig, role: str) -> nn.Module:
        width = int(self.eval.gather("feat", torch.arange(1)).shape[1])
        columns = self.teacher_columns if role == "teacher" else None
        model = build_model(spec.model, self.num_classes, width, key=role,
                            input_columns=columns or width, **spec.options())
        return node_model(model, f"{role}.model").to(self.device)

    # -- the teacher's knowledge -----------------------------------------------------------
    def cache_logits(self, model: NodeModel) -> Tensor:
        """Exact logits of a seeded sample of nodes: a cheap fingerprint of a model."""
        generator = torch.Generator().manual_seed(0)
        ids = torch.randperm(self.train.num_nodes, generator=generator)[:CHECK_NODES]
        return exact_logits(model, self.train, ids.sort().values).cpu()

    def method_context(self, student: nn.Module, teacher: nn.Module | None,
                       artifact: TeacherArtifact | None = None) -> MethodContext:
        """Shapes probed on the subgraph of the first few training-graph nodes; every
        node's label, the teacher's predictions where none is known."""
        predictions = (self.knowledge(teacher, [], artifact).predictions()
                       if teacher is not None else None)
        return self._context(student, teacher, predictions)

    def _context(self, student: nn.Module, teacher: nn.Module | None,
                 predictions: Tensor | None) -> MethodContext:
        ids = torch.arange(min(CHECK_NODES, self.train.num_nodes))
        probe = (self.train.induced(ids), self.train.gather("feat", ids))
        return context_for(student, teacher, probe, labels=self.train.gather("label"),
                           train_mask=self.train.gather("train_mask"),
                           teacher_predictions=predictions)

    def teacher_knowledge(self, teacher: nn.Module, objective: Recipe,
                          artifact: TeacherArtifact | None = None) -> TeacherKnowledge | None:
        """The frozen teacher's knowledge of every training node that ``objective`` reads,
        computed once per teacher and refined when the config says so."""
        if not objective.needs_teacher:
            return None
        knowledge = self.knowledge(teacher, objective.required_features()[1], artifact)
        refined = self._refined_logits(teacher, artifact)
        return knowledge if refined is None else knowledge.with_logits(refined)

    def knowledge(self, teacher: nn.Module, names: list[str],
                  artifact: TeacherArtifact | None) -> TeacherKnowledge:
        key = (teacher, tuple(names))  # the model itself: its id could be reused
        if key not in self._knowledge:
            # Computing it or reading it from the cache must leave the student's random
            # stream alone, so a run from a warm cache ends exactly like a cold one.
            with torch.random.fork_rng(devices=[]):
                self._knowledge[key] = self._compute_knowledge(teacher, names, artifact)
        return self._knowledge[key]

    def _compute_knowledge(self, teacher: NodeModel, names: list[str],
                           artifact: TeacherArtifact | None) -> TeacherKnowledge:
        if not self.in_memory:  # DistDGL: every trainer writes its share of the rows
            tables = layerwise(teacher, self.train, self.eval_batch, names, shared=True)
            self.say(f"teacher soft labels: every trainer wrote its share of "
                     f"{self.train.num_nodes} nodes into DistTensors (recomputed each run: "
                     "dist runs do not use the cache's soft-label files)")
            return TeacherKnowledge(tables.pop("logits"), tables, self.device)
        if not self.minibatch:
            return TeacherKnowledge.in_memory(frozen_knowledge(
                teacher, names, self.train.graph, self.train.gather("feat")))
        # Rank 0 writes the soft labels; the other ranks wait, then read them.
        if not is_main():
            barrier()
        store = self._stored(teacher, names, artifact)
        if is_main():
            barrier()
        return TeacherKnowledge(store.tensor("logits"),
                                {name: store.tensor(name) for name in store.names
                                 if name != "logits"}, self.device)

    def _stored(self, teacher: NodeModel, names: list[str],
                artifact: TeacherArtifact | None) -> SoftLabels:
        """The soft-label files of ``names`` beside the teacher's cache entry: checked
        (every byte's SHA-256, then a seeded sample of nodes recomputed exactly) and
        written anew, layer by layer, when missing or wrong."""
        if artifact is None:
            raise AssertionError("a mini-batch teacher's knowledge needs its cache artifact")
        folder = artifact.soft_labels(names)
        try:
            store = open_soft_labels(folder, verify="sha256")
        except DglkdError as exc:
            self.say(f"soft labels: {exc}; they will be recomputed")
            store = None
        if store is not None and not check_sample(
                store, lambda ids: exact_logits(teacher, self.train, ids), count=CHECK_NODES):
            self.say(f"soft labels {folder}: a sample of nodes does not reproduce; recomputing")
            store = None
        if store is None:
            tables = layerwise(teacher, self.train, self.eval_batch, names,
                               progress=self._progress)
            with SoftLabelWriter(folder, {k: tuple(v.shape) for k, v in tables.items()},
                                 dtype=self.config.soft_label_dtype) as out:
                for name, values in tables.items():
                    out.write(name, slice(None), values)
            store = open_soft_labels(folder)
        return store

    # -- Correct and Smooth ----------------------------------------------------------------
    def _refined_logits(self, teacher: nn.Module,
                        artifact: TeacherArtifact | None) -> Tensor | None:
        """The teacher's logits of every training-graph node refined by Correct and Smooth
        (``teacher_refine``) over the training graph with the training labels, as
        log-probabilities; None without refinement. Refined once per teacher."""
        if self.config.teacher_refine is None:
            return None
        if teacher not in self._refined:
            logits = self.knowledge(teacher, [], artifact).all_logits()
            self._refined[teacher] = self._refine(self.train, logits)
        return self._refined[teacher]

    def _refine(self, store: MemoryStore, logits: Tensor) -> Tensor:
        """``logits`` of every node of ``store`` refined over its graph with its training
        labels, as log-probabilities (a zero probability becomes float32's tiniest)."""
        from dglkd.graphs.propagation import correct_and_smooth

        graph = store.graph
        probs = correct_and_smooth(graph, logits.to(self.device).float().softmax(-1),
                                   graph.ndata["label"], graph.ndata["train_mask"],
                                   self.config.teacher_refine)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def refined_teacher(self, teacher: nn.Module,
                        artifact: TeacherArtifact | None = None) -> dict[str, float] | None:
        """How the teacher's refined predictions score, or None without refinement: on the
        training graph's nodes, what every student learns from. Inductively the test nodes
        are hidden from that graph; their score is then the refinement over the whole
        graph at test time (hidden nodes and their edges revealed, as when the teacher
        itself is evaluated; still training labels only)."""
        refined = self._refined_logits(teacher, artifact)
        if refined is None:
            return None
        scores = self.split_scores(self.train, refined)
        if self.train is not self.eval:
            whole = self._refine(self.eval, self.eval_logits(teacher))
            scores["test_acc"] = self.split_scores(self.eval, whole)["test_acc"]
        return {**scores, "test_acc_last": float("nan")}  # refined once, best-val teacher

    # -- batches -----------------------------------------------------------------------------
    def generator(self) -> torch.Generator:
        # Orders node batches; saved in checkpoints so a resumed phase sees the same ones.
        return torch.Generator().manual_seed(self.seed)

    def batches(self, model: NodeModel, cfg: TrainConfig, teacher: TeacherKnowledge | None,
                generator: torch.Generator,
                with_graph: bool = False) -> Callable[[], Iterator[Batch]]:
        """The whole training graph as one batch, or, when ``cfg.batch_size`` is set, one
        epoch of shuffled seed batches: node batches for a graph-free model (no graph is
        touched), else blocks from DGL's neighbour sampler with ``cfg.fanouts`` (all
        neighbours where absent). The seeds are every training-graph node when there is
        teacher knowledge to distil, else the labelled ones. With several processes each
        takes its own share of the seeds in batches of ``batch_size / processes``:
        ``batch_size`` stays the global batch, so ``--nproc`` changes the speed and not the
        optimisation. ``with_graph``: each batch carries the graph among its instances
        (the training graph, or its subgraph induced on the batch's seeds)."""
        store = self.train
        if cfg.batch_size is None:
            batch = self._whole_batch(teacher, with_graph)
            return lambda: iter([batch])
        fanouts = self._fanouts(model, cfg, with_graph)
        seeds = torch.arange(store.num_nodes)
        if teacher is None:
            seeds = seeds[store.gather("train_mask").cpu()]
        batch_size = math.ceil(cfg.batch_size / world().world_size)

        def epoch() -> Iterator[Batch]:
            seed = draw_seed(generator)
            # DGL's sampler and loader shuffle draw from DGL's and numpy's generators.
            dgl.seed(seed)
            np.random.seed(seed)
            sampled = store.loader(seeds, fanouts, batch_size, shuffle=True, seed=seed,
                                   degrees=model.source_degree_norm,
                                   num_workers=cfg.num_workers)
            if fanouts is not None and self._progress and sys.stderr.isatty():
                sampled = progress(sampled, True, "batches")
            for item in sampled:
                ids = item.output_nodes
                yield self._batch(item, teacher.rows(ids) if teacher is not None else None,
                                  with_graph)

        return epoch

    @staticmethod
    def _fanouts(model: NodeModel, cfg: TrainConfig, with_graph: bool) -> list[int] | None:
        """The fan-outs a mini-batch phase samples with; None for node batches."""
        fanouts = (cfg.fanouts or all_blocks(model.num_hops)) if model.uses_graph else None
        if with_graph and fanouts is None:
            raise no_instance_graph("node batches (a graph-free student's)",
                                    ", or train full-batch")
        return fanouts

    def _batch(self, item: Sampled, teacher: Knowledge | None, with_graph: bool) -> Batch:
        """A sampled batch of the training graph as the step takes it."""
        store, ids = self.train, item.output_nodes
        return Batch((item.blocks, item.feat), labels=store.gather("label", ids),
                     label_mask=store.gather("train_mask", ids), index=ids,
                     graph=store.induced(ids) if with_graph else None, teacher=teacher,
                     instances=len(ids) if item.blocks is not None else None)

    def probe_batch(self, model: NodeModel, cfg: TrainConfig, teacher: NodeModel | None,
                    names: list[str], with_graph: bool) -> Batch:
        """One small batch of the kind a phase of ``cfg`` makes, with the teacher's
        knowledge of its instances computed on the spot: what the start-up check steps on."""
        store = self.train
        if cfg.batch_size is None:
            knowledge = None if teacher is None else TeacherKnowledge.in_memory(
                frozen_knowledge(teacher, names, store.graph, store.gather("feat")))
            return self._whole_batch(knowledge, with_graph)
        ids = torch.arange(min(PROBE_NODES, store.num_nodes))
        (item,) = store.loader(ids, self._fanouts(model, cfg, with_graph), len(ids),
                               per_rank=False, degrees=model.source_degree_norm)
        knowledge = (exact_knowledge(teacher, store, item.output_nodes, names)
                     if teacher is not None else None)
        return self._batch(item, knowledge, with_graph)

    def probe_context(self, student: nn.Module, teacher: nn.Module | None) -> MethodContext:
        """:meth:`method_context` without a trained teacher: its predictions, which only
        name the classes negatives are drawn by, are unknown (-1) for the check."""
        return self._context(student, teacher, torch.full((self.train.num_nodes,), -1))

    def _whole_batch(self, teacher: TeacherKnowledge | None, with_graph: bool) -> Batch:
        """The whole training graph as one batch: labels on training nodes, the teacher's
        knowledge of every node and, ``with_graph``, the graph itself as the relation
        among the instances."""
        if not self.in_memory:
            raise DglkdError("train.batch_size / teacher_train.batch_size: dist runs are "
                             "mini-batch; set the phase's batch_size")
        store = self.train
        return Batch((store.graph, store.gather("feat")), labels=store.gather("label"),
                     label_mask=store.gather("train_mask"),
                     index=torch.arange(store.num_nodes, device=self.device),
                     graph=store.graph if with_graph else None,
                     teacher=teacher.rows() if teacher is not None else None)

    # -- evaluation --------------------------------------------------------------------------
    @property
    def _progress(self) -> bool:
        return self.config.log.progress

    def eval_logits(self, model: NodeModel, cfg: TrainConfig | None = None) -> Tensor:
        """``model``'s logits of every node of the whole graph: one full-graph pass, or
        layer by layer over node batches in a mini-batch config (the same logits, without
        every layer's activations at once). A phase that trains full batch (``cfg``) holds
        every layer's activations already, so it is scored in one pass even when the
        config's other phase is mini-batch: layer by layer, the arxiv-shaped GCN teacher's
        epochs took 2.6 times as long."""
        full_batch = cfg is not None and cfg.batch_size is None
        if self.in_memory and (full_batch or not self.minibatch):
            with eval_mode(model):
                return model(self.eval.graph, self.eval.gather("feat"))
        return layerwise(model, self.eval, self.eval_batch, progress=self._progress)["logits"]

    def evaluate(self, model: NodeModel, cfg: TrainConfig | None = None) -> dict[str, float]:
        """Accuracy per split of the whole graph (rank 0 evaluates, see make_phase), for the
        phase that trains with ``cfg`` (see eval_logits)."""
        return self.split_scores(self.eval, self.eval_logits(model, cfg))

    def split_scores(self, store: GraphStore, logits: Tensor) -> dict[str, float]:
        """The metric per split of ``store``'s nodes from their ``logits`` (NaN for a split
        with no node there: the hidden test nodes are not in the inductive training graph)."""
        truth = self._truth.get(id(store))
        if truth is None:  # read once: a DistGraph serves them over the network
            truth = {name: store.gather(name).cpu()
                     for name in ("label", *(f"{s}_mask" for s in SPLITS))}
            self._truth[id(store)] = truth
        pred = logits.argmax(-1).cpu()
        return {f"{split}_acc": (self.metric(pred[mask], truth["label"][mask])
                                 if bool(mask.any()) else float("nan"))
                for split in SPLITS for mask in [truth[f"{split}_mask"]]}

    def inference(self, teacher: NodeModel, student: NodeModel, seed: int) -> dict[str, Any]:
        """Median time for each model to predict the same random nodes."""
        if not is_main():
            return {}
        generator = torch.Generator().manual_seed(seed)
        targets = torch.randperm(self.eval.num_nodes, generator=generator)[:INFERENCE_TARGETS]
        teacher_ms = latency_ms(teacher, self.eval, targets)
        student_ms = latency_ms(student, self.eval, targets)
        return {"targets": len(targets), "teacher_ms": teacher_ms, "student_ms": student_ms,
                "speedup": teacher_ms / student_ms}

    def projector(self, model: nn.Module, objective: Recipe,
                  teacher: nn.Module | None) -> None:
        return None


__all__ = ["GraphBackend", "draw_seed"]

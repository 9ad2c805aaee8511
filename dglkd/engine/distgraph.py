"""Node classification on a partitioned graph served by DistDGL (``data.name: dist``).

A ``dist`` run is a set of DGL trainers, started by ``dglkd launch`` (or DGL's own
``tools/launch.py``) next to DGL's graph servers; ``DGL_DIST_MODE=standalone`` (the default
when no launcher set it) runs one process on a one-partition graph, for debugging.

* :func:`initialize` joins DistDGL (``dgl.distributed.initialize``; a server process runs
  its server there and never returns) before the torch process group exists, DGL's order.
* :class:`DistGraphBackend` is the engine's :class:`~dglkd.engine.backends.Backend` on a
  ``DistGraph``: each trainer trains on its ``node_split`` share of the nodes with
  ``DistNodeDataLoader`` and the config's fan-outs, under DDP (``make_phase`` wraps it).
* The teacher's soft labels of every node are computed layer by layer by all trainers,
  each for the nodes of its own partition (so that every write is local), into the
  persistent ``DistTensor`` ``<graph>_teacher_logits``; a student batch reads its rows
  from there.
* Evaluation runs on trainer 0 over all nodes, layer by layer (the engine has rank 0
  evaluate and broadcast); the other trainers wait in that broadcast.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from dglkd.config import Config, ModelConfig, TrainConfig
from dglkd.engine.partition import read_meta
from dglkd.engine.parallel import is_main, world
from dglkd.engine.step import Batch, median_ms, no_instance_graph
from dglkd.errors import DglkdError
from dglkd.methods import Knowledge, MethodContext, Recipe, context_for
from dglkd.models import build_model
from dglkd.models.gnn import OUT_DEGREES

# Set by ``dglkd launch --local`` when several ip_config lines share this host: the
# machine (ip_config line, partition) this trainer belongs to. DGL finds it from the
# host's addresses, which cannot tell lines of one host apart.
MACHINE_ENV = "DGLKD_MACHINE_ID"
CHECK_NODES = 256
INFERENCE_TARGETS = 1024
SPLITS = ("train", "val", "test")


def dist_mode() -> str:
    """DGL's mode: ``distributed`` under a launcher, ``standalone`` otherwise."""
    return os.environ.get("DGL_DIST_MODE", "standalone")


def check_config(config: Config) -> dict[str, Any]:
    """The partition metadata of a ``dist`` config, after checking its files."""
    data = config.data
    if not data.part_config:
        raise DglkdError("data.part_config: required for data.name 'dist' (the .json "
                         "`dglkd partition` printed)")
    meta = read_meta(data.part_config)
    if dist_mode() != "standalone":
        if not data.ip_config:
            raise DglkdError("data.ip_config: required for a distributed run (one 'IP PORT' "
                             "line per partition)")
        if not Path(data.ip_config).is_file():
            raise DglkdError(f"data.ip_config: file not found: {data.ip_config}")
        launched = os.environ.get("DGL_IP_CONFIG")
        if launched and Path(launched).resolve() != Path(data.ip_config).resolve():
            raise DglkdError(f"data.ip_config: {data.ip_config} differs from the launcher's "
                             f"--ip-config {launched}")
    elif meta["num_parts"] != 1:
        raise DglkdError(f"data.part_config: {meta['num_parts']} partitions, but standalone "
                         "mode (no launcher, DGL_DIST_MODE unset) serves one; start it with "
                         "`dglkd launch` or partition with --parts 1")
    return meta


def _pin_machine_id() -> None:
    """Make DGL's client see the machine the launcher assigned (see MACHINE_ENV)."""
    machine = os.environ.get(MACHINE_ENV)
    if machine is None:
        return
    from dgl.distributed import rpc_client

    # DGL picks the first ip_config line whose address is local: always line 0 when
    # every line is 127.0.0.1. This trainer's partition is the launcher's line instead.
    rpc_client.get_local_machine_id = lambda _namebook: int(machine)


def initialize(config: Config) -> None:
    """Join DistDGL as the launcher's environment says: a server serves here until the
    trainers shut it down and then exits; a trainer (or a standalone process) connects."""
    import dgl

    check_config(config)
    if os.environ.get("DGL_ROLE", "client") == "client":
        _pin_machine_id()
    # DGL's order: before torch.distributed, which the caller sets up afterwards.
    dgl.distributed.initialize(config.data.ip_config or "")


def run_trainer(body: Callable[[], int]) -> int:
    """Run a distributed trainer's command; on failure print one line and leave at once.

    A normal exit would run DGL's exit hook, which waits at a barrier for every other
    trainer: a failed trainer would then hang instead of dying, and the launcher notices
    failures by deaths.
    """
    if dist_mode() == "standalone":
        return body()
    try:
        return body()
    except SystemExit as exc:  # a server's normal end (DGL exits after serving)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except DglkdError as exc:
        print(f"dglkd: error: {exc}", file=sys.stderr)
        code = 2
    except BaseException as exc:  # noqa: BLE001 - any failure must end this process
        traceback.print_exc()
        print(f"dglkd: error: trainer raised {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class DistKnowledge:
    """The teacher's logits of every node in a DistTensor; a batch pulls its rows."""

    def __init__(self, logits: Any, device: torch.device) -> None:
        self.logits = logits
        self.device = device

    def rows(self, ids: Tensor) -> Knowledge:
        return Knowledge(self.logits[ids.cpu()].to(self.device), {})


def _pad_to_equal(ids: Tensor) -> Tensor:
    """Every trainer's ids padded (with repeats of its own) to the longest share, so all
    run the same number of steps: DDP's all-reduce needs every rank at every step."""
    if world().world_size == 1 or len(ids) == 0:
        return ids
    import torch.distributed as dist

    longest = torch.tensor([len(ids)], dtype=torch.int64)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    extra = int(longest) - len(ids)
    return torch.cat([ids, ids[torch.arange(extra) % len(ids)]]) if extra else ids


def _draw(generator: torch.Generator) -> int:
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


class DistGraphBackend:
    """The engine's graph backend on a DistDGL ``DistGraph`` (see the module docstring).

    Mini-batch only: ``batch_size`` of ``teacher_train`` / ``train`` is the global batch
    (each of R trainers takes ``batch_size / R``), ``fanouts`` as for one machine.
    Methods that need the teacher's hidden features, the batch's induced graph or every
    node's label (memory banks) are not supported here; they fail with one line.
    """

    def __init__(self, config: Config, device: torch.device,
                 say: Callable[[str], None] = print) -> None:
        self.config = config
        self.device = device
        self.say = say if is_main() else (lambda _message: None)
        self.seed = config.seed
        self.teacher_store: Path | None = None  # set by the experiment; unused (see below)
        self.eval_batch = config.train.eval_batch_size
        self.graph: Any = None
        self.meta: dict[str, Any] = {}

    # -- data ----------------------------------------------------------------------------
    def load(self, seed: int) -> None:
        import dgl

        self.seed = seed
        if self.graph is not None:  # the split is fixed by the partitions: load once
            return
        data = self.config.data
        self.meta = check_config(self.config)
        name = data.graph_name or self.meta["graph_name"]
        self.graph = dgl.distributed.DistGraph(name, part_config=data.part_config)
        self.name = name
        book = self.graph.get_partition_book()
        self.num_nodes = self.graph.num_nodes()
        everything = torch.ones(self.num_nodes, dtype=torch.bool)
        # force_even: every trainer the same share, taken from its own partition first.
        self.train_ids = dgl.distributed.node_split(self.graph.ndata["train_mask"], book,
                                                    force_even=True)
        self.own_ids = dgl.distributed.node_split(everything, book, force_even=True)
        # The nodes this trainer computes layer by layer into shared DistTensors: those of
        # its own partition only (force_even takes some of another's), so every row it
        # writes is local. DGL pushes a row of another machine's partition to that server
        # without waiting, and the graph barrier is answered by server 0 alone: right after
        # it the other trainer can still read the row stale (Cora in 2 partitions: 29-39
        # such rows, stale in 1-5 of 20-40 hand-offs in 3 of 5 runs; tests/test_distdgl.py).
        self.partition_ids = dgl.distributed.node_split(everything, book, force_even=False)
        self.say(f"dist: graph {name!r} ({self.num_nodes} nodes, {self.meta['num_parts']} "
                 f"partitions, mode {dist_mode()}); this trainer: {len(self.train_ids)} "
                 f"training nodes, {len(self.own_ids)} nodes")

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def new_model(self, spec: ModelConfig, role: str) -> nn.Module:
        # partitions of a graph with position features for the student alone record how
        # many content columns the teacher reads
        width = int(self.meta["num_features"])
        columns = self.meta.get("teacher_features") if role == "teacher" else None
        return build_model(spec.model, self.num_classes, width, key=role,
                           input_columns=columns or width, **spec.options()).to(self.device)

    # -- models on the DistGraph ---------------------------------------------------------
    @torch.no_grad()
    def _exact_logits(self, model: nn.Module, ids: Tensor) -> Tensor:
        """``model``'s eval-mode logits of ``ids`` from their whole neighbourhoods."""
        import dgl

        was_training = model.training
        model.eval()
        try:
            if not getattr(model, "uses_graph", True):
                return model(None, self.graph.ndata["feat"][ids].to(self.device)).cpu()
            sampler = dgl.dataloading.MultiLayerFullNeighborSampler(model.num_hops)
            loader = dgl.dataloading.DistNodeDataLoader(self.graph, ids, sampler,
                                                        batch_size=len(ids), shuffle=False)
            out = []
            for input_nodes, output_nodes, blocks in loader:
                blocks = self._degrees_per_block(model, blocks)
                feat = self.graph.ndata["feat"][input_nodes].to(self.device)
                out.append((output_nodes, model(blocks, feat).cpu()))
            order = torch.cat([o for o, _ in out])
            logits = torch.cat([v for _, v in out])
            result = torch.empty_like(logits)
            position = {int(n): i for i, n in enumerate(ids)}
            result[torch.tensor([position[int(n)] for n in order])] = logits
            return result
        finally:
            model.train(was_training)

    def _degrees_per_block(self, model: nn.Module, blocks: list) -> list:
        """Each block's sources get the whole graph's out-degrees (GCN), by their ids."""
        import dgl

        if getattr(model, "source_degree_norm", False):
            for block in blocks:
                block.srcdata[OUT_DEGREES] = self.graph.ndata[OUT_DEGREES][
                    block.srcdata[dgl.NID]]
        return [block.to(self.device) for block in blocks]

    @torch.no_grad()
    def _layerwise(self, model: nn.Module, nodes: Tensor,
                   store: Callable[[int, int], Any]) -> Any:
        """Every layer of ``model`` over ``nodes`` (full neighbourhoods, eval mode), one layer
        at a time as DGL's distributed examples do; ``store(layer, width)`` gives where the
        layer's output rows go (a DistTensor shared by the trainers, or a local tensor).
        Returns the last layer's store."""
        import dgl

        was_training = model.training
        model.eval()
        try:
            feat = self.graph.ndata["feat"]
            if not getattr(model, "uses_graph", True):
                out = store(0, model.widths[-1])
                for start in range(0, len(nodes), self.eval_batch):
                    ids = nodes[start:start + self.eval_batch]
                    out[ids] = model(None, feat[ids].to(self.device)).cpu()
                return out
            sampler = dgl.dataloading.MultiLayerFullNeighborSampler(1)
            source = feat
            for layer in range(len(model.layers)):
                out = store(layer, model.widths[layer + 1])
                loader = dgl.dataloading.DistNodeDataLoader(
                    self.graph, nodes, sampler, batch_size=self.eval_batch, shuffle=False)
                for input_nodes, output_nodes, blocks in loader:
                    block = self._degrees_per_block(model, blocks)[0]
                    h = source[input_nodes].to(self.device)
                    if layer == 0:
                        h = model.prepare_input(h)
                    h = model.finish_layer(layer, model.apply_layer(layer, block, h))
                    out[output_nodes] = h.cpu()
                if not isinstance(out, Tensor):
                    self.graph.barrier()  # every trainer's rows are in before the next layer
                source = out
            return source
        finally:
            model.train(was_training)

    def _local_store(self) -> Callable[[int, int], Tensor]:
        return lambda _layer, width: torch.zeros(self.num_nodes, width)

    def _shared_store(self) -> Callable[[int, int], Any]:
        """DistTensors for the hidden layers' outputs, shared by the trainers. Named and
        persistent, so the next seed's teacher reuses them and no collective delete runs
        whenever Python collects one."""
        from dgl.distributed import DistTensor

        return lambda layer, width: DistTensor(
            (self.num_nodes, width), torch.float32,
            name=f"{self.name}_layer{layer}_w{width}", persistent=True)

    # -- engine protocol -----------------------------------------------------------------
    def cache_logits(self, model: nn.Module) -> Tensor:
        # A seeded sample of nodes with full neighbourhoods identifies a teacher: the cache
        # check of a cached teacher is as honest as on one machine.
        generator = torch.Generator().manual_seed(0)
        ids = torch.randperm(self.num_nodes, generator=generator)[:CHECK_NODES].sort().values
        return self._exact_logits(model, ids)

    def method_context(self, student: nn.Module, teacher: nn.Module | None) -> MethodContext:
        import dgl

        # Shapes are probed on a few nodes with their self loops (a subgraph of the
        # partitioned graph, which has them): enough for every model, no sampling.
        ids = torch.arange(min(CHECK_NODES, self.num_nodes))
        sample = dgl.graph((torch.arange(len(ids)), torch.arange(len(ids))),
                           num_nodes=len(ids)).to(self.device)
        feat = self.graph.ndata["feat"][ids].to(self.device)
        return context_for(student, teacher, (sample, feat))

    def teacher_knowledge(self, teacher: nn.Module, objective: Recipe) -> Any:
        from dgl.distributed import DistTensor

        if not objective.needs_teacher:
            return None
        names = [n for n in objective.required_features()[1] if n != "logits"]
        if names:
            raise DglkdError(f"method: {objective.name!r} needs the teacher's "
                             f"{', '.join(names)}; dist runs share the teacher's logits only")
        with torch.random.fork_rng(devices=[]):
            store = self._shared_store()
            depth = len(teacher.layers) if getattr(teacher, "uses_graph", True) else 1
            classes = teacher.widths[-1]

            def into(layer: int, width: int) -> Any:
                if layer == depth - 1:  # the last layer writes the soft labels themselves
                    return DistTensor((self.num_nodes, classes), torch.float32,
                                      name=f"{self.name}_teacher_logits", persistent=True)
                return store(layer, width)

            logits = self._layerwise(teacher, self.partition_ids, into)
            self.graph.barrier()
        self.say(f"teacher soft labels: every trainer wrote its partition's nodes "
                 f"({len(self.partition_ids)} here) "
                 f"into DistTensor '{self.name}_teacher_logits' (recomputed each run: dist "
                 "runs do not use the cache's soft-label files)")
        return DistKnowledge(logits, self.device)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def batches(self, model: nn.Module, cfg: TrainConfig, teacher: DistKnowledge | None,
                generator: torch.Generator,
                with_graph: bool = False) -> Callable[[], Iterator[Batch]]:
        """This trainer's batches: its training nodes (no teacher) or all its nodes (with
        the teacher's soft labels); node batches for the MLP, sampled blocks for a GNN.
        No batch carries the graph among its nodes here."""
        import dgl

        if with_graph:
            raise no_instance_graph("DistDGL batches")
        if cfg.batch_size is None:
            raise DglkdError("train.batch_size / teacher_train.batch_size: dist runs are "
                             "mini-batch; set the phase's batch_size")
        seeds = _pad_to_equal(self.own_ids if teacher is not None else self.train_ids)
        batch_size = -(-cfg.batch_size // world().world_size)
        graph = self.graph

        def batch(ids: Tensor, inputs: tuple) -> Batch:
            return Batch(inputs, labels=graph.ndata["label"][ids].to(self.device),
                         label_mask=graph.ndata["train_mask"][ids].bool().to(self.device),
                         index=ids.to(self.device),
                         teacher=teacher.rows(ids) if teacher is not None else None)

        if not getattr(model, "uses_graph", True):
            def node_epoch() -> Iterator[Batch]:
                order = seeds[torch.randperm(len(seeds), generator=torch.Generator()
                                             .manual_seed(_draw(generator)))]
                for start in range(0, len(order), batch_size):
                    ids = order[start:start + batch_size]
                    yield batch(ids, (None, graph.ndata["feat"][ids].to(self.device)))

            return node_epoch
        sampler = dgl.dataloading.NeighborSampler(cfg.fanouts or [-1] * model.num_hops)

        def block_epoch() -> Iterator[Batch]:
            seed = _draw(generator)  # DGL's loader shuffles with numpy's generator
            dgl.seed(seed)
            np.random.seed(seed)
            loader = dgl.dataloading.DistNodeDataLoader(graph, seeds, sampler,
                                                        batch_size=batch_size, shuffle=True)
            for input_nodes, output_nodes, blocks in loader:
                blocks = self._degrees_per_block(model, blocks)
                feat = graph.ndata["feat"][input_nodes].to(self.device)
                item = batch(output_nodes, (blocks, feat))
                item.instances = len(output_nodes)
                yield item

        return block_epoch

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Accuracy per split over every node, layer by layer on this trainer alone (the
        engine calls it on trainer 0 and broadcasts the result)."""
        logits = self._layerwise(model, torch.arange(self.num_nodes), self._local_store())
        if not hasattr(self, "_eval_truth"):
            ids = torch.arange(self.num_nodes)
            self._eval_truth = {"label": self.graph.ndata["label"][ids],
                                **{s: self.graph.ndata[f"{s}_mask"][ids].bool()
                                   for s in SPLITS}}
        pred = logits.argmax(-1)
        truth = self._eval_truth
        return {f"{s}_acc": (pred[truth[s]] == truth["label"][truth[s]]).float().mean().item()
                for s in SPLITS}

    def inference(self, teacher: nn.Module, student: nn.Module, seed: int) -> dict[str, Any]:
        if not is_main():
            return {}
        generator = torch.Generator().manual_seed(seed)
        targets = torch.randperm(self.num_nodes, generator=generator)[:INFERENCE_TARGETS]
        teacher_ms = median_ms(lambda: self._exact_logits(teacher, targets), self.device, 3)
        student_ms = median_ms(lambda: self._exact_logits(student, targets), self.device, 3)
        return {"targets": len(targets), "teacher_ms": teacher_ms, "student_ms": student_ms,
                "speedup": teacher_ms / student_ms}

    def projector(self, model: nn.Module, objective: Recipe,
                  teacher: nn.Module | None) -> None:
        return None


__all__ = ["DistGraphBackend", "DistKnowledge", "MACHINE_ENV", "check_config", "dist_mode",
           "initialize", "run_trainer"]

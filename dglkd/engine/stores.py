"""Where a graph and its node data live, behind one small interface.

The graph backend (:mod:`dglkd.engine.graph`) and the code above it — layer-wise
inference, exact logits, epoch batching, evaluation — are written once against
:class:`GraphStore`. A store answers four questions: sample batches for these seeds (node
batches, or blocks from DGL's samplers), gather these rows of node data, give a per-node
table to write rows into, and wait for the other processes (barrier). Two stores hold a
graph: :class:`MemoryStore` (a ``DGLGraph`` in this process) and
:class:`~dglkd.engine.diststore.DistStore` (DistDGL's ``DistGraph``); the teacher's soft
labels on disk are the third kind of row table (:mod:`dglkd.engine.softlabels`), read and
written through the same indexing.

A *row table* is anything indexable by node ids for reading and writing: a tensor, the
tensor view of a memory-mapped soft-label file, a ``DistTensor``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import torch
from torch import Tensor

from dglkd import deps
from dglkd.engine.knowledge import RowTable
from dglkd.engine.parallel import barrier, node_loader, world
from dglkd.models.gnn import OUT_DEGREES, attach_out_degrees

dgl = deps.dgl("sampling a graph (dgl.dataloading)")

# DGL's DataLoader advises CPU affinity on every CPU loader it makes (a DGLWarning per
# evaluation or latency measurement); dglkd's loaders run in the training process, where
# pinning cores is the user's call (DGL's enable_cpu_affinity), not a per-run message.
warnings.filterwarnings("ignore", message="Dataloader CPU affinity opt is not enabled")


@dataclass
class Sampled:
    """One batch from a store: its seed (output) nodes, the nodes whose rows it reads
    (input nodes, seeds first), the blocks between them (``None`` for a node batch of a
    graph-free model) and the input nodes' features on the device (``None`` when not asked)."""

    input_nodes: Tensor
    output_nodes: Tensor
    blocks: list | None
    feat: Tensor | None


class GraphStore(Protocol):
    """One process's view of a graph and its node data (see the module docstring).

    ``shared_rows``: tables from :meth:`new_rows` are one table for every process, each
    writing its share of the rows (DistDGL); otherwise they are this process's own and one
    process computes every row.
    """

    num_nodes: int
    device: torch.device
    shared_rows: bool

    def loader(self, seeds: Tensor, fanouts: Sequence[int] | None, batch_size: int, *,
               shuffle: bool = False, seed: int = 0, per_rank: bool = True,
               features: bool = True, degrees: bool = False,
               num_workers: int = 0) -> Iterator[Sampled]:
        """Batches of ``seeds``: node batches when ``fanouts`` is None, else blocks from a
        neighbour sampler with those fan-outs (-1: every neighbour). ``per_rank``: this
        process takes its own share of the seeds, every process the same number of
        batches (DDP steps together). ``shuffle`` with ``seed``: a seeded order.
        ``features``: gather the input nodes' features. ``degrees``: blocks carry the whole
        graph's out-degrees (:data:`OUT_DEGREES`)."""
        ...

    def gather(self, name: str, ids: Tensor | None = None) -> Tensor:
        """Rows ``ids`` (all rows when None) of node data ``name``, on the device."""
        ...

    def induced(self, ids: Tensor) -> Any:
        """The subgraph among nodes ``ids`` (node i of it is ``ids[i]``), on the device."""
        ...

    def new_rows(self, name: str, width: int) -> RowTable:
        """An empty (num_nodes, width) float32 table to write rows into."""
        ...

    def own_nodes(self) -> Tensor:
        """The nodes whose rows this process writes into shared tables (every node where
        tables are its own)."""
        ...

    def barrier(self) -> None:
        """Wait until every process sharing the store gets here."""
        ...


def all_blocks(count: int) -> list[int]:
    """Fan-outs that take every neighbour for ``count`` layers."""
    return [-1] * count


def sampler(fanouts: Sequence[int]) -> Any:
    """DGL's sampler for ``fanouts``: every neighbour per layer when all are -1 (exact
    neighbourhoods), else a neighbour sampler."""
    if all(f == -1 for f in fanouts):
        return dgl.dataloading.MultiLayerFullNeighborSampler(len(fanouts))
    return dgl.dataloading.NeighborSampler(list(fanouts))


def node_batches(ids: Tensor, batch_size: int, shuffle: bool, seed: int,
                 per_rank: bool) -> Iterator[Tensor]:
    """``ids`` in batches; ``per_rank``: this rank's share through torch's
    ``DistributedSampler`` (padded so every rank runs as many batches)."""
    rank, ranks, _ = world() if per_rank else (0, 1, 0)
    order = torch.utils.data.DistributedSampler(ids, num_replicas=ranks, rank=rank,
                                                shuffle=shuffle, seed=seed)
    return iter(torch.utils.data.DataLoader(ids, batch_size=batch_size, sampler=order))


class MemoryStore:
    """A ``DGLGraph`` in this process (on the configured device) with its node data."""

    shared_rows = False

    def __init__(self, graph: Any, device: torch.device) -> None:
        self.graph = graph.to(device)
        self.device = device
        self.num_nodes = self.graph.num_nodes()
        self._structure: Any = None

    def _structure_only(self, degrees: bool) -> Any:
        """A view of the graph without node and edge data (blocks of layer-wise inference
        read the previous layer's rows, not features), plus the out-degrees if asked."""
        if self._structure is None:
            view = self.graph.local_var()
            for frame in (view.ndata, view.edata):
                for key in list(frame.keys()):
                    frame.pop(key)
            self._structure = view
        if degrees and OUT_DEGREES not in self._structure.ndata:
            attach_out_degrees(self._structure)
        return self._structure

    def loader(self, seeds: Tensor, fanouts: Sequence[int] | None, batch_size: int, *,
               shuffle: bool = False, seed: int = 0, per_rank: bool = True,
               features: bool = True, degrees: bool = False,
               num_workers: int = 0) -> Iterator[Sampled]:
        seeds = seeds.to(self.device)
        if fanouts is None:
            for ids in node_batches(seeds, batch_size, shuffle, seed, per_rank):
                yield Sampled(ids, ids, None, self.graph.ndata["feat"][ids] if features
                              else None)
            return
        if degrees and OUT_DEGREES not in self.graph.ndata:
            # Stored once: sampled blocks then carry them (DGL copies node data into
            # blocks). On ogbn-products it costs a copy of the graph's CSR, so only models
            # that divide by them ask.
            attach_out_degrees(self.graph)
        graph = self.graph if features else self._structure_only(degrees)
        if per_rank:
            loader = node_loader(graph, seeds, sampler(fanouts), batch_size, shuffle=shuffle,
                                 num_workers=num_workers, device=self.device, seed=seed)
        else:
            loader = dgl.dataloading.DataLoader(
                graph, seeds, sampler(fanouts), device=self.device, batch_size=batch_size,
                shuffle=shuffle, num_workers=num_workers)
        for input_nodes, output_nodes, blocks in loader:
            feat = blocks[0].srcdata["feat"] if features else None
            yield Sampled(input_nodes, output_nodes, blocks, feat)

    def gather(self, name: str, ids: Tensor | None = None) -> Tensor:
        values = self.graph.ndata[name]
        return values if ids is None else values[ids.to(values.device)]

    def induced(self, ids: Tensor) -> Any:
        return dgl.node_subgraph(self.graph, ids.to(self.device))

    def new_rows(self, name: str, width: int) -> Tensor:
        return torch.empty(self.num_nodes, width)

    def own_nodes(self) -> Tensor:
        return torch.arange(self.num_nodes)

    def barrier(self) -> None:
        barrier()


__all__ = ["GraphStore", "MemoryStore", "Sampled",
           "all_blocks", "node_batches", "sampler"]

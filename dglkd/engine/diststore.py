"""A graph served by DistDGL (``data.name: dist``), as a :class:`~dglkd.engine.stores.GraphStore`.

A ``dist`` run is a set of DGL trainers, started by ``dglkd launch`` (or DGL's own
``tools/launch.py``) next to DGL's graph servers; ``DGL_DIST_MODE=standalone`` (the default
when no launcher set it) runs one process on a one-partition graph, for debugging.

* :func:`initialize` joins DistDGL (``dgl.distributed.initialize``; a server process runs
  its server there and never returns) before the torch process group exists, DGL's order.
* :class:`DistStore` serves the partitioned graph to the one graph backend: each trainer
  samples its ``node_split`` share of the seeds with ``DistNodeDataLoader``, reads node data
  from the ``DistGraph`` and writes per-node tables (the teacher's soft labels, hidden
  layers during layer-wise inference) into persistent ``DistTensor`` s, each trainer its
  own share of the rows.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from dglkd import deps
from dglkd.config import Config
from dglkd.engine.parallel import MACHINE_ENV, world
from dglkd.engine.partition import read_meta
from dglkd.engine.stores import Sampled, node_batches, sampler
from dglkd.errors import DglkdError
from dglkd.models.gnn import OUT_DEGREES

dgl = deps.dgl("DistDGL (data.name dist)")


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


class DistStore:
    """The partitioned graph of a ``dist`` config, served by DistDGL (module docstring)."""

    shared_rows = True

    def __init__(self, config: Config, device: torch.device) -> None:
        self.meta = check_config(config)
        self.name = config.data.graph_name or self.meta["graph_name"]
        self.graph = dgl.distributed.DistGraph(self.name, part_config=config.data.part_config)
        self.device = device
        self.num_nodes = self.graph.num_nodes()
        self._book = self.graph.get_partition_book()
        self._own: Tensor | None = None

    def _share(self, seeds: Tensor) -> Tensor:
        """This trainer's share of ``seeds``: DGL's ``node_split`` (nodes of its own
        partition first, every trainer the same count), padded to the longest share."""
        mask = torch.zeros(self.num_nodes, dtype=torch.bool)
        mask[seeds.cpu()] = True
        return _pad_to_equal(dgl.distributed.node_split(mask, self._book, force_even=True))

    def loader(self, seeds: Tensor, fanouts: Sequence[int] | None, batch_size: int, *,
               shuffle: bool = False, seed: int = 0, per_rank: bool = True,
               features: bool = True, degrees: bool = False,
               num_workers: int = 0) -> Iterator[Sampled]:
        # num_workers: DistDGL's samplers are the launcher's --num-samplers processes.
        seeds = self._share(seeds) if per_rank else seeds.cpu()
        if fanouts is None:
            for ids in node_batches(seeds, batch_size, shuffle, seed, per_rank=False):
                yield Sampled(ids, ids, None, self.gather("feat", ids) if features else None)
            return
        # DGL's loader shuffles with numpy's global generator and samples with DGL's.
        dgl.seed(seed)
        np.random.seed(seed)
        loader = dgl.dataloading.DistNodeDataLoader(self.graph, seeds, sampler(fanouts),
                                                    batch_size=batch_size, shuffle=shuffle)
        for input_nodes, output_nodes, blocks in loader:
            if degrees:
                for block in blocks:
                    block.srcdata[OUT_DEGREES] = self.graph.ndata[OUT_DEGREES][
                        block.srcdata[dgl.NID]]
            blocks = [block.to(self.device) for block in blocks]
            feat = self.gather("feat", input_nodes) if features else None
            yield Sampled(input_nodes, output_nodes, blocks, feat)

    def gather(self, name: str, ids: Tensor | None = None) -> Tensor:
        if ids is None:
            ids = torch.arange(self.num_nodes)
        values = self.graph.ndata[name][ids.cpu()]
        # partitions store masks as integers
        return (values.bool() if name.endswith("_mask") else values).to(self.device)

    def induced(self, ids: Tensor) -> Any:
        """Every in-edge of ``ids`` from the servers, kept where both ends are among
        ``ids``, renumbered by position in ``ids``. (DGL 2.1's own
        ``dgl.distributed.in_subgraph`` fails on a server in distributed mode, unpacking
        its local result into three values of four; taking every neighbour with
        ``sample_neighbors`` gives the same edges through the sampling path.)"""
        ids = ids.cpu()
        incoming = dgl.distributed.sample_neighbors(self.graph, ids, -1)
        src, dst = incoming.edges()
        position = torch.full((self.num_nodes,), -1, dtype=torch.int64)
        position[ids] = torch.arange(len(ids))
        keep = position[src] >= 0
        return dgl.graph((position[src[keep]], position[dst[keep]]),
                         num_nodes=len(ids)).to(self.device)

    def new_rows(self, name: str, width: int) -> Any:
        """A persistent ``DistTensor`` named by the graph, the table and its width: the next
        seed's teacher reuses it, and no collective delete runs whenever Python collects
        one."""
        return dgl.distributed.DistTensor((self.num_nodes, width), torch.float32,
                                          name=f"{self.name}_{name}_w{width}", persistent=True)

    def own_nodes(self) -> Tensor:
        """This trainer's nodes of its own partition (its share of them with several
        trainers per machine), so that every row it writes is local. A row of another
        machine's partition is pushed to that server without waiting (KVClient.push), and the
        graph's barrier is answered by server 0 alone: right after it the other trainer can
        still read the row stale (Cora in 2 partitions: 29-39 such rows of node_split's even
        shares, stale in 1-5 of 20-40 hand-offs in 3 of 5 runs)."""
        if self._own is None:
            self._own = dgl.distributed.node_split(torch.ones(self.num_nodes, dtype=torch.bool),
                                                   self._book, force_even=False)
        return self._own

    def barrier(self) -> None:
        self.graph.barrier()


__all__ = ["DistStore", "check_config", "dist_mode", "initialize",
           "run_trainer"]

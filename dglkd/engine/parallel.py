"""Data parallelism inside a rank: process group, DDP, collectives, loaders.

Two ways start the ranks, one code path for the training code:

* ``torchrun --nproc_per_node N -m dglkd distill CONFIG``: torchrun starts the ranks and
  sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
* ``dglkd distill CONFIG --nproc N``: :func:`dglkd.processes.ranks.launch` starts them
  with the same variables (on 127.0.0.1) under dglkd's one process supervisor.

Each rank calls :func:`setup_from_env` once and :func:`teardown` at the end. Inside a
rank, :func:`wrap_ddp` makes the model synchronise gradients, :func:`node_loader` gives
each rank its own share of the seed nodes, and :func:`all_reduce_mean` averages per-epoch
metrics. With one process all of them are no-ops, so the single-process engine can call
them unconditionally.

Only one host is supported: DGL's ``use_ddp`` DataLoader splits the seeds among the ranks
of one machine (it keeps the index tensor in shared memory).
"""
from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from dglkd import deps
from dglkd.errors import DglkdError

# Set by ``dglkd launch --local`` when several ip_config lines share this host: the
# machine (ip_config line, partition) a DistDGL trainer belongs to (see
# dglkd.engine.diststore: DGL finds it from the host's addresses, which cannot tell lines
# of one host apart).
MACHINE_ENV = "DGLKD_MACHINE_ID"
# torchrun's contract; dglkd.processes.ranks.launch sets exactly these in every rank.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Overrides the default collective timeout when setup_from_env() is not given one (the
# torchrun path, where nothing else could pass it down).
TIMEOUT_ENV = "DGLKD_DIST_TIMEOUT_S"
# A collective waiting longer than this fails instead of hanging forever. It bounds how
# long a rank may wait for the slowest peer (evaluation on rank 0, say), so it is generous;
# under launch() a dead peer is noticed at once by the parent anyway.
DEFAULT_TIMEOUT_S = 600.0
# See teardown(): long enough for gloo's worker threads to take the GIL once, even on a
# busy machine, and nothing next to a training run.
_GLOO_SETTLE_S = 0.2


class ProcessGroupInfo(NamedTuple):
    """Where this process stands; unpacks as ``rank, world_size, local_rank``."""

    rank: int
    world_size: int
    local_rank: int


# --------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------

def world() -> ProcessGroupInfo:
    """(rank, world_size, local_rank) of this process; (0, 1, 0) without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return ProcessGroupInfo(0, 1, 0)
    rank = dist.get_rank()
    # LOCAL_RANK is only known from the launcher; on one host it equals the rank.
    return ProcessGroupInfo(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))


def is_main() -> bool:
    """True on the rank that writes files and prints (rank 0, or the only process)."""
    return world().rank == 0


def backend_for(device: str | torch.device) -> str:
    """NCCL for CUDA tensors, gloo for everything else (NCCL cannot reduce CPU tensors)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_device(device: str | torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when ``device`` is CUDA, ``device`` otherwise."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DglkdError(f"device: rank with LOCAL_RANK={local_rank} needs a GPU of its own, "
                         f"but only {count} are visible")
    return torch.device("cuda", local_rank)


def _timeout(timeout_s: float | None) -> timedelta:
    if timeout_s is None:
        timeout_s = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    if timeout_s <= 0:
        raise DglkdError(f"distributed timeout must be positive (got {timeout_s} s)")
    return timedelta(seconds=timeout_s)


def _check_env() -> None:
    missing = [name for name in ENV_VARS if not os.environ.get(name)]
    if missing:
        raise DglkdError(f"distributed: WORLD_SIZE is set but {', '.join(missing)} is not; "
                         "start the ranks with torchrun or dglkd's --nproc")
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    if local_world is not None and local_world != os.environ["WORLD_SIZE"]:
        raise DglkdError(f"distributed: {os.environ['WORLD_SIZE']} ranks over several hosts "
                         f"({local_world} on this one); dglkd runs on one host only")


def setup_from_env(device: str | torch.device = "cpu",
                   timeout_s: float | None = None) -> torch.device:
    """Join the default process group described by torchrun's variables, if any.

    Without WORLD_SIZE in the environment this is a single process and nothing happens.
    Returns the device this rank should use (``cuda:LOCAL_RANK`` for CUDA, one GPU per
    rank). ``timeout_s`` (default: $DGLKD_DIST_TIMEOUT_S or 600) bounds every collective,
    so a rank whose peer died fails instead of waiting forever.
    """
    if "WORLD_SIZE" not in os.environ:
        return torch.device(device)
    _check_env()
    rank_device = local_device(device)
    if dist.is_initialized():
        return rank_device
    if rank_device.type == "cuda":
        # NCCL binds each communicator to the current device; set it before the group exists.
        torch.cuda.set_device(rank_device)
    dist.init_process_group(backend_for(rank_device), init_method="env://",
                            rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]),
                            timeout=_timeout(timeout_s))
    return rank_device


def teardown() -> None:
    """Leave the default process group, if this process is in one.

    Safe on an error path too: it waits for no peer.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo":
        # torch < 2.8 destroys a gloo group holding the GIL while it waits for the group's
        # worker threads, and a worker dropping the last reference to a tensor made in
        # Python needs the GIL: a deadlock (pytorch/pytorch#56297, fixed by #154976) that
        # hit about one run in six here. Sleeping releases the GIL so the workers finish
        # releasing the last collective's tensors first; launch() also stops a rank that
        # still hangs here once its target has returned.
        time.sleep(_GLOO_SETTLE_S)
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------
# Inside a rank: model, metrics, loader
# --------------------------------------------------------------------------------------

def wrap_ddp(module: nn.Module, device: str | torch.device, **options: Any) -> nn.Module:
    """The module in DistributedDataParallel when there are several ranks, itself otherwise.

    DDP broadcasts rank 0's parameters at construction (every rank starts identical) and
    averages gradients during ``backward``. Parameter names gain a ``module.`` prefix; use
    :func:`unwrap` to save checkpoints or find layers by path.
    """
    device = torch.device(device)
    module = module.to(device)  # DDP requires the parameters on their device already
    if world().world_size == 1:
        return module
    if device.type == "cuda":
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index],
                                                   output_device=device.index, **options)
    return nn.parallel.DistributedDataParallel(module, **options)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (its parameter names and layer paths are the original)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object); ``value`` itself alone."""
    if world().world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if world().world_size > 1:
        dist.barrier()


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(metrics: dict[str, float]) -> dict[str, float]:
    """The mean of each metric over all ranks (a copy of ``metrics`` for one process).

    Every rank must call it with the same keys; one reduction carries all of them.
    """
    if world().world_size == 1:
        return dict(metrics)
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64,
                          device=_collective_device())
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= dist.get_world_size()
    return dict(zip(keys, values.tolist()))


def node_loader(graph: Any, seeds: torch.Tensor, sampler: Any, batch_size: int,
                shuffle: bool = False, drop_last: bool = False, num_workers: int = 0,
                device: str | torch.device | None = None, seed: int = 0) -> Any:
    """A ``dgl.dataloading.DataLoader`` over ``seeds`` that gives each rank its own share.

    With several ranks DGL's ``use_ddp`` cuts the seeds into one contiguous, equal slice per
    rank; without ``drop_last`` the last slice is padded with repeats of its own nodes, so
    every rank runs the same number of steps (DDP needs that: a missing step would leave
    the others waiting in the gradient all-reduce). DGL only shuffles inside a slice, so
    with ``shuffle`` the seeds are first permuted with ``seed`` — the same permutation on
    every rank, hence disjoint slices drawn from the whole set. The per-epoch shuffle after
    that uses numpy's global generator (seed it, e.g. with ``seed_everything``).
    """
    dgl = deps.dgl("sampled mini-batches (dgl.dataloading)")
    use_ddp = world().world_size > 1
    seeds = torch.as_tensor(seeds).to(graph.device)  # DGL wants seeds where the graph is
    if use_ddp and shuffle:
        order = torch.randperm(len(seeds), generator=torch.Generator().manual_seed(seed))
        seeds = seeds[order.to(seeds.device)]
    return dgl.dataloading.DataLoader(graph, seeds, sampler, device=device, use_ddp=use_ddp,
                                      ddp_seed=seed, batch_size=batch_size, shuffle=shuffle,
                                      drop_last=drop_last, num_workers=num_workers)

"""Data parallelism over several processes on one host: process group, launcher, DDP, loaders.

Two ways in, one code path for the training code:

* ``torchrun --nproc_per_node N -m dglkd distill CONFIG``: torchrun starts the ranks and
  sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; each rank calls
  :func:`setup_from_env` once and :func:`teardown` at the end.
* ``launch(N, target, args)`` (``dglkd distill CONFIG --nproc N``): this process spawns N
  ranks with torch.multiprocessing, sets the same variables in each (on 127.0.0.1), calls
  ``setup_from_env`` before ``target(*args)`` and ``teardown`` after, and supervises them:
  the first rank to fail stops the others and becomes one :class:`DglkdError` here.

Inside a rank, :func:`wrap_ddp` makes the model synchronise gradients, :func:`node_loader`
gives each rank its own share of the seed nodes, and :func:`all_reduce_mean` averages
per-epoch metrics. With one process all of them are no-ops, so the single-process engine
can call them unconditionally.

Only one host is supported: DGL's ``use_ddp`` DataLoader splits the seeds among the ranks
of one machine (it keeps the index tensor in shared memory).
"""
from __future__ import annotations

import json
import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from torch import nn

from dglkd.errors import DglkdError

LOOPBACK = "127.0.0.1"
# torchrun's contract; launch() sets exactly these in every rank it starts.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Overrides the default collective timeout when setup_from_env() is not given one (the
# torchrun path, where nothing else could pass it down).
TIMEOUT_ENV = "DGLKD_DIST_TIMEOUT_S"
# A collective waiting longer than this fails instead of hanging forever. It bounds how
# long a rank may wait for the slowest peer (evaluation on rank 0, say), so it is generous;
# under launch() a dead peer is noticed at once by the parent anyway.
DEFAULT_TIMEOUT_S = 600.0
# How long a rank asked to stop with SIGTERM gets before SIGKILL.
DEFAULT_GRACE_S = 5.0

_RESULT_FILE = "result.pt"
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
    import dgl

    use_ddp = world().world_size > 1
    seeds = torch.as_tensor(seeds).to(graph.device)  # DGL wants seeds where the graph is
    if use_ddp and shuffle:
        order = torch.randperm(len(seeds), generator=torch.Generator().manual_seed(seed))
        seeds = seeds[order.to(seeds.device)]
    return dgl.dataloading.DataLoader(graph, seeds, sampler, device=device, use_ddp=use_ddp,
                                      ddp_seed=seed, batch_size=batch_size, shuffle=shuffle,
                                      drop_last=drop_last, num_workers=num_workers)


# --------------------------------------------------------------------------------------
# Launcher: the rank side
# --------------------------------------------------------------------------------------

def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _describe(rank: int, exc: BaseException) -> str:
    if isinstance(exc, DglkdError):
        return _one_line(str(exc))  # already written for the user
    if isinstance(exc, KeyboardInterrupt):
        return f"rank {rank} was interrupted; the other ranks were stopped"
    if isinstance(exc, SystemExit):
        return f"rank {rank} called sys.exit({exc.code!r}); the other ranks were stopped"
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return _one_line(f"rank {rank} raised {detail}") + "; the other ranks were stopped"


def _die(rank: int, workdir: Path, exc: BaseException) -> None:
    """Leave the failure for the parent and exit at once.

    ``os._exit`` skips destructors on purpose: tearing down a process group whose peers
    are still mid-collective can block, and the parent notices a failure only when this
    process has gone; the kernel closes the sockets, which is what wakes the peers.
    """
    record = {"message": _describe(rank, exc), "time": time.time(),
              "traceback": "".join(traceback.format_exception(exc))}
    try:
        (workdir / f"rank{rank}.error.json").write_text(json.dumps(record))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _limit_threads(nproc: int) -> None:
    # N ranks each using every core would oversubscribe the CPU; an explicit
    # OMP_NUM_THREADS from the user wins (torch already applied it at import).
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))


def _run_rank(rank: int, nproc: int, port: int, device: str, timeout_s: float | None,
              target: Callable[..., Any], args: tuple, workdir: str) -> None:
    """Entry point of one spawned rank (called by torch.multiprocessing as fn(i, *args))."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": LOOPBACK,
                       "MASTER_PORT": str(port)})
    _limit_threads(nproc)
    try:
        setup_from_env(device, timeout_s)
        result = target(*args)
        if rank == 0:
            torch.save(result, Path(workdir) / _RESULT_FILE)
    except SystemExit as exc:
        if exc.code not in (0, None):
            _die(rank, Path(workdir), exc)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent
        _die(rank, Path(workdir), exc)
    # From here on the rank's work is done: the parent no longer counts a failure of this
    # rank against the run, and stops it if its shutdown hangs.
    _finished_marker(Path(workdir), rank).touch()
    teardown()


# --------------------------------------------------------------------------------------
# Launcher: the parent side
# --------------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port free on the loopback interface right now (the OS picks it).

    Another program could take it before rank 0 binds it; that shows up as rank 0 failing
    with "address already in use", and a new launch picks another port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _loopback_interface() -> str | None:
    import psutil  # a dependency of DGL

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == LOOPBACK for a in addresses):
            return name
    return None


def _pin_to_loopback() -> dict[str, str]:
    """Environment that keeps gloo/NCCL's own sockets on loopback.

    MASTER_ADDR only places the rendezvous store; gloo otherwise connects the ranks through
    the address the host name resolves to. The user's explicit choice is kept.
    """
    name = _loopback_interface()
    if name is None:
        return {}
    return {var: name for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
            if var not in os.environ}


def _exit_reason(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _failure_message(failed: list[int], processes: list[Any],
                     workdir: Path) -> tuple[str, str | None]:
    """One line for the failure that most likely caused the others, and its traceback.

    A rank that died without a word (a signal, os._exit) is the cause: a peer's death
    surfaces in the survivors as an exception, not as a silent death. Among ranks that
    reported an exception, the earliest report wins.
    """
    def key(rank: int) -> tuple[int, float]:
        path = workdir / f"rank{rank}.error.json"
        if not path.exists():
            return (0, 0.0)
        return (1, json.loads(path.read_text())["time"])

    rank = min(failed, key=key)
    path = workdir / f"rank{rank}.error.json"
    if path.exists():
        record = json.loads(path.read_text())
        return record["message"], record["traceback"]
    reason = _exit_reason(processes[rank].exitcode)
    return f"rank {rank} died ({reason}); the other ranks were stopped", None


def _finished_marker(workdir: Path, rank: int) -> Path:
    return workdir / f"rank{rank}.finished"


def _supervise(processes: list[Any], workdir: Path, grace_s: float,
               poll_s: float = 0.5) -> None:
    """Wait for every rank; at the first one that fails, raise DglkdError.

    A rank fails when it exits non-zero before its target has returned. Once every rank
    still running has returned from its target, they get ``grace_s`` to shut down; the
    caller stops whichever is still there (a shutdown hang must not hang the run).
    """
    pending = {p.sentinel: rank for rank, p in enumerate(processes)}
    all_finished_at: float | None = None
    while pending:
        # The timeout keeps Ctrl-C and the finished markers seen; an exit wakes this at once.
        for sentinel in multiprocessing.connection.wait(list(pending), timeout=poll_s):
            processes[pending.pop(sentinel)].join()
        failed = [r for r, p in enumerate(processes) if p.exitcode not in (None, 0)
                  and not _finished_marker(workdir, r).exists()]
        if failed:
            message, worker_traceback = _failure_message(failed, processes, workdir)
            error = DglkdError(message)
            error.worker_traceback = worker_traceback  # type: ignore[attr-defined]
            raise error
        if all(_finished_marker(workdir, r).exists() for r in pending.values()):
            all_finished_at = all_finished_at or time.monotonic()
            if time.monotonic() - all_finished_at > grace_s:
                return


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _stop(processes: list[Any], grace_s: float) -> None:
    """SIGTERM every rank still alive (and what it started), SIGKILL after ``grace_s``."""
    import psutil

    alive = [p for p in processes if p.is_alive()]
    # A rank's own children (DataLoader workers) are collected before the rank goes:
    # afterwards they are no longer findable as its descendants.
    children = [c for p in alive for c in _descendants(p.pid)]
    for p in alive:
        p.terminate()
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace_s
    for p in alive:
        p.join(max(0.0, deadline - time.monotonic()))
    _, stubborn = psutil.wait_procs(children, timeout=max(0.0, deadline - time.monotonic()))
    for p in alive:
        if p.is_alive():
            p.kill()
        p.join()
    for child in stubborn:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(stubborn, timeout=grace_s)


def _check_launch(nproc: int, device: str) -> None:
    if nproc < 1:
        raise DglkdError(f"nproc: must be at least 1 (got {nproc})")
    if nproc > 1 and ((dist.is_available() and dist.is_initialized())
                      or "WORLD_SIZE" in os.environ):
        raise DglkdError("nproc: this process is already one rank of a distributed run "
                         "(torchrun?); use either torchrun or --nproc, not both")
    if torch.device(device).type == "cuda" and nproc > 1:
        count = torch.cuda.device_count()
        if count < nproc:
            raise DglkdError(f"nproc: {nproc} ranks on {device} need one GPU each; "
                             f"{count} visible")


def launch(nproc: int, target: Callable[..., Any], args: Sequence[Any] = (),
           device: str | torch.device = "cpu", timeout_s: float | None = None,
           grace_s: float = DEFAULT_GRACE_S) -> Any:
    """Run ``target(*args)`` in ``nproc`` ranks on this host; return rank 0's return value.

    Ranks are spawned (not forked: CUDA and DGL's threads do not survive a fork), so
    ``target`` must be a module-level function and ``args`` picklable. Each rank joins the
    process group (:func:`setup_from_env`, on 127.0.0.1) before ``target`` and leaves it
    after; ``device`` is the configured device, each rank's own comes from
    ``local_device(device)``. Rank 0's return value travels back through ``torch.save``
    (tensors come back on the CPU).

    The first rank to fail stops the others (SIGTERM, SIGKILL after ``grace_s``) and is
    raised here as one :class:`DglkdError` line: a ``DglkdError`` raised in a rank keeps its
    message; another exception reads "rank R raised Type: message; …"; a death reads
    "rank R died (exit code X / signal NAME); the other ranks were stopped". The full
    traceback, when there is one, is on the error's ``worker_traceback``. Ctrl-C here
    stops every rank too. ``nproc=1`` runs ``target`` in this process, without a group.
    """
    device = str(device)
    _check_launch(nproc, device)
    if nproc == 1:
        return target(*args)
    with tempfile.TemporaryDirectory(prefix="dglkd-launch-") as tmp:
        workdir = Path(tmp)
        saved_env = {k: os.environ.get(k) for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
        # Spawned children copy this process's environment as it is when they start.
        os.environ.update(_pin_to_loopback())
        try:
            context = torch_mp.start_processes(
                _run_rank, args=(nproc, free_port(), device, timeout_s, target, tuple(args), tmp),
                nprocs=nproc, join=False, start_method="spawn")
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            # Spawn pickles the target before it starts a process, so none was started.
            raise DglkdError(f"launch: the target and its args must be picklable (a module-"
                             f"level function): {_one_line(str(exc))}") from None
        finally:
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        try:
            _supervise(context.processes, workdir, grace_s)
        finally:
            _stop(context.processes, grace_s)  # also on Ctrl-C and on the first failure
        result = workdir / _RESULT_FILE
        return torch.load(result, map_location="cpu") if result.exists() else None

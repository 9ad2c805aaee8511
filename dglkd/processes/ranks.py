"""DDP ranks on this host: ``launch(N, target, args)`` runs ``target(*args)`` in N processes.

``dglkd distill CONFIG --nproc N`` goes through here (its target runs the same command as
one rank); ``torchrun --nproc_per_node N -m dglkd ...`` is the other way in, and both end
in the same environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on
127.0.0.1), which :func:`dglkd.engine.parallel.setup_from_env` joins.

Each rank is a fresh interpreter (``python -m dglkd.processes.ranks WORKDIR RANK``; CUDA
and DGL's threads do not survive a fork) started and watched by the one
:class:`~dglkd.processes.supervisor.Supervisor`: the target and its arguments travel
pickled through the work folder, with this process's import path, as
``multiprocessing``'s spawn sends them. A rank that fails leaves a record there (its
one-line message, the time, the traceback) and exits at once; the first failure stops the
others and comes back here as one :class:`DglkdError` line.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from dglkd.engine.parallel import setup_from_env, teardown
from dglkd.errors import DglkdError
from dglkd.processes.supervisor import (DEFAULT_GRACE_S, LOOPBACK, Child, Supervisor,
                                        free_port, one_line)

PAYLOAD = "payload.pkl"
RESULT = "result.pt"


def _record(workdir: Path, rank: int) -> Path:
    return workdir / f"rank{rank}.error.json"


def _finished_marker(workdir: Path, rank: int) -> Path:
    return workdir / f"rank{rank}.finished"


# --------------------------------------------------------------------------------------
# The rank side
# --------------------------------------------------------------------------------------

def _describe(rank: int, exc: BaseException) -> str:
    if isinstance(exc, DglkdError):
        return one_line(str(exc))  # already written for the user
    if isinstance(exc, KeyboardInterrupt):
        return f"rank {rank} was interrupted; the other ranks were stopped"
    if isinstance(exc, SystemExit):
        return f"rank {rank} called sys.exit({exc.code!r}); the other ranks were stopped"
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return one_line(f"rank {rank} raised {detail}") + "; the other ranks were stopped"


def _die(rank: int, workdir: Path, exc: BaseException) -> None:
    """Leave the failure for the parent and exit at once.

    ``os._exit`` skips destructors on purpose: tearing down a process group whose peers
    are still mid-collective can block, and the parent notices a failure only when this
    process has gone; the kernel closes the sockets, which is what wakes the peers.
    """
    record = {"message": _describe(rank, exc), "time": time.time(),
              "traceback": "".join(traceback.format_exception(exc))}
    try:
        _record(workdir, rank).write_text(json.dumps(record))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def run_rank(workdir: Path, rank: int) -> None:
    """One rank: join the process group, run the target, leave the group."""
    payload = pickle.loads((workdir / PAYLOAD).read_bytes())
    device, timeout_s = payload["device"], payload["timeout_s"]
    try:
        setup_from_env(device, timeout_s)
        result = payload["target"](*payload["args"])
        if rank == 0:
            torch.save(result, workdir / RESULT)
    except SystemExit as exc:
        if exc.code not in (0, None):
            _die(rank, workdir, exc)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent
        _die(rank, workdir, exc)
    # From here on the rank's work is done: the parent no longer counts a failure of this
    # rank against the run, and stops it if its shutdown hangs.
    _finished_marker(workdir, rank).touch()
    teardown()


def _main(argv: list[str]) -> None:
    workdir, rank = Path(argv[0]), int(argv[1])
    # The parent's import path, before the target is unpickled (spawn does the same).
    sys.path[:] = json.loads((workdir / "sys_path.json").read_text())
    run_rank(workdir, rank)


# --------------------------------------------------------------------------------------
# The parent side
# --------------------------------------------------------------------------------------

def _loopback_interface() -> str | None:
    import psutil  # a dependency of DGL

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == LOOPBACK for a in addresses):
            return name
    return None


def _rank_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    """torchrun's variables on 127.0.0.1, gloo/NCCL's own sockets kept on loopback
    (MASTER_ADDR only places the rendezvous store; gloo otherwise connects the ranks
    through the address the host name resolves to; the user's explicit choice is kept),
    and the cores shared among the ranks unless the user set OMP_NUM_THREADS."""
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(port),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS",
                                             str(max(1, (os.cpu_count() or 1) // nproc)))}
    interface = _loopback_interface()
    if interface is not None:
        env.update({var: interface for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
                    if var not in os.environ})
    return env


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


def _payload(target: Callable[..., Any], args: Sequence[Any], device: str,
             timeout_s: float | None) -> bytes:
    try:
        return pickle.dumps({"target": target, "args": tuple(args), "device": device,
                             "timeout_s": timeout_s})
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise DglkdError(f"launch: the target and its args must be picklable (a module-"
                         f"level function): {one_line(str(exc))}") from None


def launch(nproc: int, target: Callable[..., Any], args: Sequence[Any] = (),
           device: str | torch.device = "cpu", timeout_s: float | None = None,
           grace_s: float = DEFAULT_GRACE_S) -> Any:
    """Run ``target(*args)`` in ``nproc`` ranks on this host; return rank 0's return value
    (through ``torch.save``: tensors come back on the CPU).

    ``target`` must be a module-level function and ``args`` picklable. Each rank joins the
    process group (on 127.0.0.1) before ``target`` and leaves it after; ``device`` is the
    configured device, each rank's own comes from ``local_device(device)``.

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
    payload = _payload(target, args, device, timeout_s)
    with tempfile.TemporaryDirectory(prefix="dglkd-ranks-") as tmp:
        workdir = Path(tmp)
        (workdir / PAYLOAD).write_bytes(payload)
        (workdir / "sys_path.json").write_text(json.dumps(sys.path))
        port = free_port()
        with Supervisor(grace_s) as supervisor:
            for rank in range(nproc):
                supervisor.start(
                    f"rank {rank}", [sys.executable, "-m", "dglkd.processes.ranks", tmp,
                                     str(rank)], _rank_env(rank, nproc, port), own_log=False,
                    record=_record(workdir, rank),
                    finished=lambda r=rank: _finished_marker(workdir, r).exists())

            def describe(child: Child, how: str, message: str | None) -> str:
                return message or f"{child.label} died ({how}); the other ranks were stopped"

            supervisor.watch(lambda: all(c.finished() for c in supervisor.children), describe)
            # Every rank is done with its target: a shutdown that hangs must not hang the run.
            supervisor.linger(lambda _child: True, grace_s)
        result = workdir / RESULT
        return torch.load(result, map_location="cpu") if result.exists() else None


if __name__ == "__main__":
    _main(sys.argv[1:])


__all__ = ["launch", "run_rank"]

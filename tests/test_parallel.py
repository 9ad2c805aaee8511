"""The multi-process layer: DDP gradients equal single-process ones; failing ranks end the run.

Each launch spawns two fresh interpreters (gloo on the CPU), so the rank targets live at
module level where the spawned ranks can import them.
"""
from __future__ import annotations

import atexit
import os
import signal
import time
from pathlib import Path

import dgl
import psutil
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from dgl.nn import SAGEConv
from torch import nn

from dglkd.engine import parallel
from dglkd.engine.parallel import (ProcessGroupInfo, all_reduce_mean, node_loader, unwrap,
                                   world, wrap_ddp)
from dglkd.errors import DglkdError
from dglkd.processes.ranks import launch
from dglkd.processes.supervisor import free_port

NUM_NODES, IN_DIM, NUM_CLASSES = 30, 8, 3
# The global batch of the DDP step: 2 ranks × 4 seeds.
GLOBAL_BATCH = [3, 7, 11, 12, 20, 25, 28, 1]
HALF = len(GLOBAL_BATCH) // 2
# From a rank's death to launch() raising, the other rank stopped: the parent wakes at
# once, so this is mostly the survivor exiting (or its SIGTERM grace) on a busy machine.
DETECTION_BOUND_S = 15.0


class BlockSAGE(nn.Module):
    """Two SAGEConv layers applied to a list of sampled blocks (one per layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([SAGEConv(IN_DIM, 16, "mean"),
                                     SAGEConv(16, NUM_CLASSES, "mean")])

    def forward(self, blocks: list, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.layers[0](blocks[0], x))
        return self.layers[1](blocks[1], h)


def _toy_problem() -> tuple[dgl.DGLGraph, torch.Tensor, torch.Tensor]:
    """The same small random graph (with self loops), features and labels in every process."""
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(0, NUM_NODES, (90,), generator=gen)
    dst = torch.randint(0, NUM_NODES, (90,), generator=gen)
    graph = dgl.add_self_loop(dgl.remove_self_loop(dgl.graph((src, dst), num_nodes=NUM_NODES)))
    x = torch.randn(NUM_NODES, IN_DIM, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (NUM_NODES,), generator=gen)
    return graph, x, y


def _fresh_model() -> BlockSAGE:
    torch.manual_seed(0)
    return BlockSAGE()


def _gather(obj: object) -> list:
    shares: list = [None] * dist.get_world_size()
    dist.all_gather_object(shares, obj)
    return shares


# ---------------------------------------------------------------- rank targets

def _ddp_step() -> dict:
    """One DDP step on this rank's half of GLOBAL_BATCH; what rank 0 returns is checked."""
    torch.set_num_threads(1)
    graph, x, y = _toy_problem()
    sampler = dgl.dataloading.MultiLayerFullNeighborSampler(2)
    model = wrap_ddp(_fresh_model(), "cpu")
    batches = list(node_loader(graph, torch.tensor(GLOBAL_BATCH), sampler, batch_size=HALF))
    assert len(batches) == 1
    input_nodes, output_nodes, blocks = batches[0]
    loss = F.cross_entropy(model(blocks, x[input_nodes]), y[output_nodes])
    loss.backward()  # DDP averages the gradients of the two halves
    grads = {name: p.grad.clone() for name, p in unwrap(model).named_parameters()}

    # A shuffled loader over 10 seeds, batches of 3: each rank's share, over all batches.
    shuffled = node_loader(graph, torch.arange(10), sampler, batch_size=3, shuffle=True, seed=5)
    shuffled_nodes = torch.cat([out for _, out, _ in shuffled]).tolist()
    return {"world": tuple(world()), "is_main": parallel.is_main(),
            "env": {k: os.environ[k] for k in parallel.ENV_VARS},
            "grads": grads, "all_grads": _gather(grads),
            "shares": _gather(output_nodes.tolist()),
            "shuffled_shares": _gather(shuffled_nodes),
            "losses": _gather(loss.item()), "mean": all_reduce_mean({"loss": loss.item()})}


def _raise_user_error() -> None:
    if world().rank == 1:
        raise DglkdError("data.name: no dataset 'nope'")
    dist.barrier()  # rank 0 waits for a peer that fails


def _raise_bug() -> None:
    if world().rank == 1:
        raise KeyError("missing")
    dist.barrier()


def _write_pid(pid_dir: str) -> None:
    Path(pid_dir, f"{world().rank}.pid").write_text(str(os.getpid()))


def _mark_failure(pid_dir: str) -> None:
    """When the failure happened: detection is timed from here, not from the launch."""
    Path(pid_dir, "failure_time").write_text(repr(time.time()))


def _killed_mid_run(pid_dir: str) -> None:
    torch.set_num_threads(1)
    _write_pid(pid_dir)
    dist.barrier()
    if world().rank == 1:
        _mark_failure(pid_dir)
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(1))  # rank 0 waits here for a peer that is gone
    time.sleep(600)


def _stubborn_survivor(pid_dir: str) -> None:
    _write_pid(pid_dir)
    if world().rank == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL can stop this rank
        dist.barrier()
        while True:
            time.sleep(0.1)
    dist.barrier()
    _mark_failure(pid_dir)
    os._exit(3)


def _hangs_on_exit(pid_dir: str) -> str:
    _write_pid(pid_dir)
    if world().rank == 1:
        atexit.register(time.sleep, 600)  # runs after teardown, as interpreter exit
    return "done"


# ---------------------------------------------------------------- helpers

def _pids(pid_dir: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(pid_dir.glob("*.pid"))]


def _children() -> list[psutil.Process]:
    """This process's children, less multiprocessing's resource tracker (it lives on)."""
    return [c for c in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(c.cmdline())]


def _assert_nothing_left(pids: list[int]) -> None:
    assert _children() == []
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _launch_failing(target, pid_dir: Path, **kwargs) -> tuple[str, float]:
    """The one-line error and the seconds from the failure to launch() raising it."""
    with pytest.raises(DglkdError) as info:
        launch(2, target, (str(pid_dir),), **kwargs)
    return str(info.value), time.time() - float((pid_dir / "failure_time").read_text())


# ---------------------------------------------------------------- tests

def test_single_process_is_a_no_op(one_thread):
    assert world() == ProcessGroupInfo(0, 1, 0) and tuple(world()) == (0, 1, 0)
    assert parallel.is_main()
    assert parallel.backend_for("cpu") == "gloo"
    assert parallel.backend_for(torch.device("cuda", 1)) == "nccl"
    model = BlockSAGE()
    assert wrap_ddp(model, "cpu") is model and unwrap(model) is model
    assert all_reduce_mean({"a": 1.5}) == {"a": 1.5}
    assert parallel.setup_from_env("cpu") == torch.device("cpu")  # no WORLD_SIZE: nothing
    graph, _, _ = _toy_problem()
    loader = node_loader(graph, torch.arange(10), dgl.dataloading.MultiLayerFullNeighborSampler(1),
                         batch_size=4, shuffle=True)
    assert not loader.use_ddp
    assert sorted(torch.cat([out for _, out, _ in loader]).tolist()) == list(range(10))
    assert launch(1, sum, ([1, 2],)) == 3  # one rank runs here, without a group


def test_setup_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(DglkdError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        parallel.setup_from_env("cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DglkdError, match="either torchrun or --nproc"):
        launch(2, sum, ([1],))
    try:
        assert parallel.setup_from_env("cpu", timeout_s=30) == torch.device("cpu")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert world() == (0, 1, 0)
    finally:
        parallel.teardown()
    assert not dist.is_initialized()


def test_launch_rejects_bad_arguments():
    with pytest.raises(DglkdError, match="nproc: must be at least 1"):
        launch(0, sum, ([1],))
    with pytest.raises(DglkdError, match="must be picklable"):
        launch(2, lambda: None)
    assert _children() == []


def test_ddp_step_gradient_equals_single_process_gradient(one_thread):
    out = launch(2, _ddp_step)

    assert out["world"] == (0, 2, 0) and out["is_main"]
    assert out["env"]["MASTER_ADDR"] == "127.0.0.1" and out["env"]["WORLD_SIZE"] == "2"
    # use_ddp gave each rank its own contiguous half of the batch, no overlap.
    rank0, rank1 = out["shares"]
    assert rank0 == GLOBAL_BATCH[:HALF] and rank1 == GLOBAL_BATCH[HALF:]
    # Shuffled: disjoint shares that together cover every seed.
    first, second = out["shuffled_shares"]
    assert len(first) == len(second) == 5 and sorted(first + second) == list(range(10))

    graph, x, y = _toy_problem()
    model = _fresh_model()
    input_nodes, output_nodes, blocks = dgl.dataloading.MultiLayerFullNeighborSampler(2) \
        .sample_blocks(graph, torch.tensor(GLOBAL_BATCH))
    loss = F.cross_entropy(model(blocks, x[input_nodes]), y[output_nodes])
    loss.backward()

    for name, param in model.named_parameters():
        torch.testing.assert_close(out["grads"][name], param.grad, atol=1e-5, rtol=0)
        torch.testing.assert_close(out["all_grads"][1][name], out["grads"][name], atol=0, rtol=0)
    assert out["mean"]["loss"] == pytest.approx(sum(out["losses"]) / 2)
    assert out["mean"]["loss"] == pytest.approx(loss.item(), abs=1e-5)


def test_user_error_in_a_rank_comes_back_as_its_one_line(one_thread):
    with pytest.raises(DglkdError) as info:
        launch(2, _raise_user_error)
    assert str(info.value) == "data.name: no dataset 'nope'"
    assert _children() == []


def test_bug_in_a_rank_names_the_rank_and_the_exception(one_thread):
    with pytest.raises(DglkdError) as info:
        launch(2, _raise_bug)
    assert str(info.value) == "rank 1 raised KeyError: 'missing'; the other ranks were stopped"
    assert "KeyError" in info.value.worker_traceback
    assert _children() == []


def test_rank_killed_mid_collective_ends_the_run(one_thread, tmp_path):
    message, elapsed = _launch_failing(_killed_mid_run, tmp_path)
    assert message == "rank 1 died (signal SIGKILL); the other ranks were stopped"
    assert elapsed < DETECTION_BOUND_S
    assert len(_pids(tmp_path)) == 2
    _assert_nothing_left(_pids(tmp_path))


def test_rank_ignoring_sigterm_is_killed(one_thread, tmp_path):
    message, elapsed = _launch_failing(_stubborn_survivor, tmp_path, grace_s=1.0)
    assert message == "rank 1 died (exit code 3); the other ranks were stopped"
    assert elapsed < DETECTION_BOUND_S
    assert len(_pids(tmp_path)) == 2
    _assert_nothing_left(_pids(tmp_path))


def test_rank_hanging_after_its_work_does_not_hang_the_run(one_thread, tmp_path):
    start = time.monotonic()
    assert launch(2, _hangs_on_exit, (str(tmp_path),), grace_s=1.0) == "done"
    assert time.monotonic() - start < 60
    _assert_nothing_left(_pids(tmp_path))

"""Throughput of DDP ranks on one machine: seed nodes per second of a neighbour-sampled
SAGE teacher epoch through dglkd's engine, 1 rank vs N ranks, side by side in one run.

Each arm is launched the way ``dglkd distill --nproc N`` launches (``parallel.launch``:
spawned ranks, gloo on CPU) on the same synthetic graph, model, global batch and number
of steps; rank 0 reports the time of the timed steps. Ranks on one CPU machine share its
cores, so N ranks cannot be N times faster here: the number says what the DDP machinery
costs and gains on this machine, not what N GPUs give.

    python benchmarks/bench_ddp.py [--nproc 2] [--nodes 50000] [--steps 20] [--rounds 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

WARMUP_STEPS = 2


def _config(scale: float, batch_size: int) -> dict:
    """ogbn-arxiv's shape at ``scale``; a SAGE 2×256 teacher phase of sampled blocks."""
    train = {"epochs": 1, "lr": 0.003, "weight_decay": 0.0, "batch_size": batch_size}
    return {"name": "ddp_throughput", "seed": 0, "n_runs": 1, "device": "cpu",
            "data": {"name": "synthetic", "like": "ogbn-arxiv", "scale": scale},
            "teacher": {"model": "sage", "hidden": 256, "layers": 2},
            "teacher_train": {**train, "fanouts": [10, 10]},
            "student": {"model": "mlp", "hidden": 256, "layers": 2}, "train": train,
            "method": {"name": "glnn"}, "log": {"progress": False, "tensorboard": False}}


def rank_throughput(nodes: int, steps: int, batch_size: int, threads: int) -> float:
    """Seeds per second over ``steps`` DDP steps (run in every rank; rank 0's is kept)."""
    import torch

    from dglkd.config import config_from_dict
    from dglkd.data.synthetic import PRESETS
    from dglkd.engine.graph import GraphBackend
    from dglkd.engine.parallel import barrier, world, wrap_ddp
    from dglkd.engine.step import train_step
    from dglkd.methods import compose

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # ogbn-arxiv's shape and difficulty at ``nodes`` nodes (its average degree).
    config = config_from_dict(_config(nodes / PRESETS["ogbn-arxiv"].num_nodes, batch_size))
    backend = GraphBackend(config, torch.device("cpu"), lambda _message: None)
    backend.load(0)
    model = backend.new_model(config.teacher, "teacher")
    objective = compose(ce=1.0)
    # Each rank takes its share of every global batch of ``batch_size`` seeds.
    epoch = backend.batches(model, config.teacher_train, None, backend.generator())

    def endless():
        while True:
            yield from epoch()

    batches = endless()
    trained = wrap_ddp(model, torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.teacher_train.lr)
    for _ in range(WARMUP_STEPS):
        train_step(next(batches), trained, objective, optimizer, None)
    barrier()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(next(batches), trained, objective, optimizer, None)
    barrier()
    seconds = time.perf_counter() - start
    return steps * batch_size / seconds if world().rank == 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved 1-rank/N-rank rounds")
    args = parser.parse_args()

    import os

    from dglkd.processes.ranks import launch

    # The ranks unpickle the target by module name: bench_ddp, not __main__.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_ddp import rank_throughput as target

    cores = os.cpu_count() or 1
    arms = {1: [], args.nproc: []}
    for _ in range(args.rounds):
        for nproc in arms:
            threads = max(1, cores // nproc)
            arms[nproc].append(launch(nproc, target,
                                      (args.nodes, args.steps, args.batch_size, threads)))
    one, many = statistics.median(arms[1]), statistics.median(arms[args.nproc])
    print(f"synthetic ogbn-arxiv-shaped graph, {args.nodes:,} nodes, SAGE 2x256, fan-outs [10, 10], global batch "
          f"{args.batch_size}, {args.steps} timed steps, {cores} cores shared by the ranks")
    print("| ranks | seed nodes/s (median of rounds) |\n|---:|---:|")
    print(f"| 1 | {one:,.0f} |\n| {args.nproc} | {many:,.0f} |")
    print(f"{args.nproc} ranks / 1 rank: {many / one:.2f}x")


if __name__ == "__main__":
    main()

"""Neighbour-sampled mini-batch training through dglkd's engine at ogbn-arxiv's shape (CPU).

On the synthetic graph with ogbn-arxiv's shape and difficulty
(``data: {name: synthetic, like: ogbn-arxiv}``, seed 0: 169,343 nodes, 128 features, 40
classes; an MLP reaches about 56 and a GCN about 72 there; ``--scale`` for a share of it), a SAGE 2×256 teacher trained on labels
(``compose(ce=1.0)``):

(a) Accuracy and memory: mini-batch training (``GraphBackend.batches``: ``NeighborSampler`` blocks,
    fan-outs ``--fanouts``, seed batches of 1,024; evaluated layer by layer over batches of
    4,096) against full-batch training (one whole-graph step per epoch, evaluated on the
    whole graph), each through ``train_epoch`` in its own process, so each peak RSS
    (``ru_maxrss``) is its own. Prints both validation accuracies (goal: within 1 point),
    seconds and peak RSS (mini-batch's should be the lower).
(b) Engine overhead: in one process, a fixed number of sampled batches through dglkd's
    engine (``GraphBackend.batches`` + ``train_epoch``) against the same batches through a bare loop
    written as DGL's ``examples/pytorch/graphsage/node_classification.py`` writes one
    (``dgl.dataloading.DataLoader`` over the training ids with the same ``NeighborSampler``,
    ``model(blocks, x)``, ``F.cross_entropy``, Adam step). Same model class and initial
    weights, same seeds (numpy's, torch's and DGL's generators reset before every run, so
    both see the same seed batches and neighbourhoods: checked), same thread count. The arms run interleaved (A B, B A,
    ...) for ``--rounds`` rounds after one warm-up each; prints each arm's median seconds,
    dglkd's overhead ratio (goal ≤ 1.10) and the median of the per-round ratios. A third
    arm runs the engine's batches with the subgraph induced on each batch's seeds (built
    only for terms that read it, hkd/lsp native) and prints its time over the engine's.

    DGLBACKEND=pytorch python benchmarks/bench_minibatch.py [--epochs-mini 2] \\
        [--epochs-full 40] [--batches 30] [--rounds 7] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from itertools import islice

os.environ.setdefault("DGLBACKEND", "pytorch")

ROLES = ("minibatch", "fullbatch", "overhead")
SAGE = {"hidden": 256, "layers": 2, "dropout": 0.5}
BATCH = 1024
EVAL_BATCH = 4096


def _peak_gb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _backend(args: argparse.Namespace, minibatch: bool):
    """Threads for torch and DGL, the config (a mini-batch teacher phase or a full-batch
    one) and its loaded graph backend (SAGE needs no self loops)."""
    import torch
    from dgl.utils import set_num_threads

    from dglkd.config import config_from_dict
    from dglkd.engine.graph import GraphBackend

    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    if minibatch:
        train = {"epochs": args.epochs_mini, "lr": args.lr_mini, "batch_size": BATCH,
                 "fanouts": args.fanouts, "eval_batch_size": EVAL_BATCH}
    else:
        train = {"epochs": args.epochs_full, "lr": args.lr_full}
    config = config_from_dict({
        "name": "minibatch_bench", "seed": 0, "n_runs": 1, "device": "cpu",
        "data": {"name": "synthetic", "like": "ogbn-arxiv", "scale": args.scale,
                 "self_loop": False},
        "teacher": {"model": "sage", **SAGE}, "teacher_train": train,
        "student": {"model": "mlp"}, "train": {"epochs": 1, "eval_batch_size": EVAL_BATCH},
        "method": {"name": "glnn"}, "log": {"progress": False, "tensorboard": False}})
    backend = GraphBackend(config, torch.device("cpu"), lambda _message: None)
    backend.load(0)
    return config, backend


def _sage(config, backend):
    import torch

    torch.manual_seed(0)
    return backend.new_model(config.teacher, "teacher")


def role_train(args: argparse.Namespace, minibatch: bool) -> dict:
    """(a): one kind of training for its epochs, then validation accuracy and peak RSS."""
    import torch

    from dglkd.engine.optim import make_optimizer
    from dglkd.engine.step import train_epoch
    from dglkd.methods import compose

    config, backend = _backend(args, minibatch)
    loaded_gb = _peak_gb()
    model = _sage(config, backend)
    cfg = config.teacher_train
    # Sampled blocks with a batch size, else the whole graph as one batch.
    epoch = backend.batches(model, cfg, None, torch.Generator().manual_seed(0))
    objective = compose(ce=1.0, context=backend.num_classes)
    optimizer = make_optimizer(cfg, model.parameters())
    torch.manual_seed(1)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        losses = train_epoch(epoch(), model, objective, optimizer, None)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    # Layer by layer over batches of EVAL_BATCH in a mini-batch config, else whole graph.
    metrics = backend.evaluate(model)
    return {"role": "minibatch" if minibatch else "fullbatch", "epochs": cfg.epochs,
            "lr": cfg.lr, "train_s": train_s, "eval_s": time.perf_counter() - start,
            "loss": losses["total"], "val_acc": metrics["val_acc"],
            "test_acc": metrics["test_acc"], "loaded_gb": loaded_gb, "peak_gb": _peak_gb()}


def role_overhead(args: argparse.Namespace) -> dict:
    """(b): dglkd's engine against a bare DGL loop on the same sampled batches."""
    import dgl
    import numpy as np
    import torch
    import torch.nn.functional as F

    from dglkd.engine.optim import make_optimizer
    from dglkd.engine.step import train_epoch
    from dglkd.methods import compose

    args.epochs_mini = 1
    config, backend = _backend(args, minibatch=True)
    cfg = config.teacher_train
    graph = backend.train.graph
    train_ids = torch.nonzero(backend.train.gather("train_mask")).view(-1)

    # dglkd: the engine's batches and step.
    engine_model = _sage(config, backend)
    objective = compose(ce=1.0, context=backend.num_classes)
    engine_opt = make_optimizer(cfg, engine_model.parameters())

    def engine_epoch(seed: int, with_graph: bool = False):
        return backend.batches(engine_model, cfg, None, torch.Generator().manual_seed(seed),
                               with_graph)()

    def engine_run(seed: int, with_graph: bool = False) -> None:
        train_epoch(islice(engine_epoch(seed, with_graph), args.batches), engine_model,
                    objective, engine_opt, None)

    # Bare: the loop of DGL's examples/pytorch/graphsage/node_classification.py.
    bare_model = _sage(config, backend)
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
    sampler = dgl.dataloading.NeighborSampler(args.fanouts)

    def bare_loader():
        # The engine shows no progress bar here (not a terminal, progress off), so its
        # DataLoader shuffles once per epoch, as this one does.
        return dgl.dataloading.DataLoader(graph, train_ids, sampler, device=backend.device,
                                          batch_size=BATCH, shuffle=True, drop_last=False,
                                          num_workers=0)

    def bare_run(_seed: int) -> None:
        bare_model.train()
        total_loss = 0.0
        for _input_nodes, _output_nodes, blocks in islice(bare_loader(), args.batches):
            x = blocks[0].srcdata["feat"]
            y = blocks[-1].dstdata["label"]
            y_hat = bare_model(blocks, x)
            loss = F.cross_entropy(y_hat, y)
            bare_opt.zero_grad()
            loss.backward()
            bare_opt.step()
            total_loss += loss.item()

    def reseed(seed: int) -> None:
        """Every generator a run draws from: DGL's DataLoader shuffles with numpy's global
        one, its sampler uses DGL's (both of which the engine reseeds per epoch with a value
        drawn from the phase's generator, given here as ``Generator().manual_seed(seed)``:
        the same value is set here for both arms), dropout uses torch's."""
        drawn = int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(seed)))
        np.random.seed(drawn)
        dgl.seed(drawn)
        torch.manual_seed(seed)

    def sampled(nodes_of_batches) -> list:
        return [(out, blocks[0].srcdata[dgl.NID]) for out, blocks in nodes_of_batches]

    # Same seeds, same batches: the first few batches' seeds and input nodes agree.
    reseed(0)
    engine_nodes = sampled((b.index, b.inputs[0]) for b in islice(engine_epoch(0), 3))
    reseed(0)
    bare_nodes = sampled((out, blocks) for _i, out, blocks in islice(bare_loader(), 3))
    same = all(torch.equal(a, b) for pa, pb in zip(engine_nodes, bare_nodes)
               for a, b in zip(pa, pb))

    # "dglkd_graph": the engine's batches with the subgraph induced on each batch's seeds,
    # what a term that reads the graph (hkd/lsp native) costs on top; the other arm's
    # objective does not read it, so the engine no longer builds it.
    arms = {"dglkd": engine_run, "bare": bare_run,
            "dglkd_graph": lambda seed: engine_run(seed, with_graph=True)}
    for name, run in arms.items():  # warm-up
        reseed(0)
        run(0)
    times: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for round_ in range(args.rounds):
        shift = round_ % len(names)  # each arm takes every position in turn
        order = names[shift:] + names[:shift]
        for name in order:
            seed = round_ + 1
            reseed(seed)
            start = time.perf_counter()
            arms[name](seed)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    per_round = [a / b for a, b in zip(times["dglkd"], times["bare"])]
    return {"role": "overhead", "batches": args.batches, "rounds": args.rounds,
            "same_batches": same, "times": times, "median_s": median,
            "ratio": median["dglkd"] / median["bare"],
            "median_round_ratio": statistics.median(per_round),
            "graph_ratio": median["dglkd_graph"] / median["dglkd"], "peak_gb": _peak_gb()}


def run_role(role: str, argv: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DGLBACKEND": "pytorch"}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--role", role],
                          stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"role {role} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="share of ogbn-arxiv's nodes and edges (same average degree)")
    parser.add_argument("--epochs-mini", type=int, default=2)
    parser.add_argument("--epochs-full", type=int, default=40)
    parser.add_argument("--lr-mini", type=float, default=0.003)
    parser.add_argument("--lr-full", type=float, default=0.03)
    parser.add_argument("--fanouts", type=int, nargs="+", default=[15, 10])
    parser.add_argument("--batches", type=int, default=30,
                        help="(b): batches per arm and round (an epoch is 90)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and DGL threads (default 1: on a shared 2-core machine "
                             "two OpenMP threads stall each other)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if len(args.fanouts) != SAGE["layers"]:
        parser.error(f"--fanouts: one per layer ({SAGE['layers']})")
    if args.role:
        result = (role_overhead(args) if args.role == "overhead"
                  else role_train(args, args.role == "minibatch"))
        print(json.dumps(result))
        return
    argv = [a for a in sys.argv[1:]]
    if "--json" in argv:
        at = argv.index("--json")
        del argv[at : at + 2]
    results = {role: run_role(role, argv, args.threads) for role in ROLES}
    mini, full, over = (results[r] for r in ROLES)
    print(f"graph: synthetic, ogbn-arxiv's shape and difficulty at scale {args.scale} "
          f"(128 features, 40 classes); "
          f"SAGE 2x256, fan-outs {args.fanouts}, batch {BATCH:,}; {args.threads} thread(s)")
    print("(a) | training | epochs | lr | train s | val acc | test acc | peak RSS GB |")
    print("    |---|---:|---:|---:|---:|---:|---:|")
    for row in (mini, full):
        print(f"    | {row['role']} | {row['epochs']} | {row['lr']:g} | {row['train_s']:.0f} | "
              f"{row['val_acc']:.4f} | {row['test_acc']:.4f} | {row['peak_gb']:.2f} |")
    gap = abs(mini["val_acc"] - full["val_acc"]) * 100
    print(f"    val accuracy gap {gap:.2f} points (goal ≤ 1); mini-batch peak RSS "
          f"{mini['peak_gb'] / full['peak_gb']:.2f}× full-batch's")
    print(f"(b) {over['batches']} batches per run, {over['rounds']} interleaved rounds "
          f"(same batches in both arms: {over['same_batches']}): dglkd "
          f"{over['median_s']['dglkd']:.2f} s, bare DGL loop {over['median_s']['bare']:.2f} s "
          f"(medians) → overhead ratio {over['ratio']:.3f} (goal ≤ 1.10); median per-round "
          f"ratio {over['median_round_ratio']:.3f}")
    print(f"    the same engine batches with the induced subgraph per batch (what hkd/lsp "
          f"native read): {over['median_s']['dglkd_graph']:.2f} s → "
          f"{over['graph_ratio']:.3f}× the engine without it")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), **results, "val_gap_points": gap}, handle, indent=2)


if __name__ == "__main__":
    main()

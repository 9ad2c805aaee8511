"""DistDGL on loopback against one machine, at ogbn-arxiv's shape (CPU).

The synthetic graph with ogbn-arxiv's shape (``dglkd.data.synthetic.ogb_like(seed=0)``: 169,343
nodes, 128 features, 40 classes) and a SAGE 2×256 teacher trained on labels, mini-batch
(seed batches of ``--batch-size``, fan-outs ``--fanouts``):

* ``single``: one process, dglkd's single-machine mini-batch path (``GraphBackend``).
* ``dist``: the graph in ``--parts`` partitions (``dglkd partition``), served and trained by
  ``dglkd launch --local`` (1 server + 1 trainer per partition, DDP over the trainers),
  through the same ``GraphBackend`` over DistDGL's store.

Each trainer times ``--batches`` steps of its share of an epoch (the global batch is split
over the trainers, as the engine does): time spent waiting for the next batch (sampling,
feature and label pulls: "sampling") and in the training step ("compute"), and reports
them scaled to a whole epoch. Peak RSS: ``ru_maxrss`` of each trainer (and of the single
process); servers' RSS is sampled every 0.2 s from outside (psutil), so it is a lower bound.

    DGLBACKEND=pytorch python benchmarks/bench_distdgl.py [--parts 2] [--batches 20] \\
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("DGLBACKEND", "pytorch")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _config(args: argparse.Namespace, data: dict) -> dict:
    train = {"epochs": 1, "lr": 0.003, "weight_decay": 0.0, "batch_size": args.batch_size,
             "fanouts": args.fanouts, "eval_batch_size": 4096}
    return {"name": "arxiv_shape", "seed": 0, "n_runs": 1, "device": "cpu", "data": data,
            "teacher": {"model": "sage", "hidden": 256, "layers": 2, "dropout": 0.5},
            "teacher_train": train, "student": {"model": "mlp", "hidden": 256, "layers": 2},
            "train": {**train, "fanouts": None}, "method": {"name": "glnn"},
            "log": {"progress": False, "tensorboard": False}}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_steps(backend, config, batches: int) -> dict:
    """Sampling and compute seconds of ``batches`` steps, scaled to this trainer's epoch."""
    import torch

    from dglkd.engine.optim import make_optimizer
    from dglkd.engine.parallel import wrap_ddp
    from dglkd.engine.step import train_step
    from dglkd.methods.recipe import build_recipe, recipe_spec

    torch.manual_seed(0)
    model = backend.new_model(config.teacher, "teacher")
    objective = build_recipe(recipe_spec({"terms": {"ce": 1.0}}, "teacher"),
                             backend.method_context(model, None), "teacher")
    optimizer = make_optimizer(config.teacher_train, model.parameters())
    trained = wrap_ddp(model, torch.device("cpu"))
    source = backend.batches(model, config.teacher_train, None, backend.generator())
    sampling = compute = 0.0
    steps = 0
    it = iter(source())
    while steps < batches:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        middle = time.perf_counter()
        train_step(batch, trained, objective, optimizer, None)
        compute += time.perf_counter() - middle
        sampling += middle - start
        steps += 1
    return {"steps": steps, "sampling_s": sampling, "compute_s": compute}


def _epoch_steps(backend, batch_size: int, shares: int) -> int:
    """Steps of one trainer's share of a teacher epoch (its labelled nodes)."""
    labelled = int(backend.train.gather("train_mask").sum())
    return math.ceil(math.ceil(labelled / shares) / math.ceil(batch_size / shares))


def role_single(args: argparse.Namespace) -> None:
    from dglkd.config import config_from_dict
    from dglkd.engine.graph import GraphBackend

    config = config_from_dict(_config(args, {"name": "synthetic"}))
    backend = GraphBackend(config, __import__("torch").device("cpu"), lambda _m: None)
    backend.load(0)
    per_epoch = _epoch_steps(backend, args.batch_size, 1)
    timed = _time_steps(backend, config, args.batches)
    print(json.dumps({"role": "single", "epoch_steps": per_epoch, **timed,
                      "peak_rss_mb": _peak_mb()}), flush=True)


def role_trainer(args: argparse.Namespace) -> None:
    from dglkd.config import config_from_dict
    from dglkd.engine import diststore, parallel
    from dglkd.engine.graph import GraphBackend

    config = config_from_dict(_config(args, {"name": "dist", "part_config": args.part_config,
                                             "ip_config": args.ip_config}))

    def body() -> int:
        diststore.initialize(config)  # servers serve here and exit
        parallel.setup_from_env("cpu")
        backend = GraphBackend(config, __import__("torch").device("cpu"), lambda _m: None)
        backend.load(0)
        per_epoch = _epoch_steps(backend, args.batch_size, parallel.world().world_size)
        timed = _time_steps(backend, config, args.batches)
        record = {"role": f"trainer {parallel.world().rank}", "epoch_steps": per_epoch,
                  **timed, "peak_rss_mb": _peak_mb()}
        Path(args.out_dir, f"trainer{parallel.world().rank}.json").write_text(
            json.dumps(record))
        parallel.barrier()
        parallel.teardown()
        return 0

    diststore.run_trainer(body)


def _watch_servers(stop: threading.Event, peaks: dict) -> None:
    import psutil

    while not stop.is_set():
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
                if env.get("DGL_ROLE") == "server" and "bench_distdgl" in " ".join(
                        proc.cmdline()):
                    key = f"server {env.get('DGL_SERVER_ID')}"
                    peaks[key] = max(peaks.get(key, 0.0), proc.memory_info().rss / 2**20)
            except Exception:  # noqa: BLE001 - processes come and go
                continue
        stop.wait(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", default="main", choices=["main", "single", "trainer"])
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--fanouts", type=int, nargs="+", default=[10, 10])
    parser.add_argument("--part-config")
    parser.add_argument("--ip-config")
    parser.add_argument("--out-dir")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.role == "single":
        return role_single(args)
    if args.role == "trainer":
        return role_trainer(args)

    from dglkd.config import config_from_dict
    from dglkd.engine.partition import partition
    from dglkd.processes.distdgl import launch_local
    from dglkd.processes.supervisor import free_port

    common = ["--batches", str(args.batches), "--batch-size", str(args.batch_size),
              "--fanouts", *map(str, args.fanouts)]
    single = subprocess.run([sys.executable, __file__, "--role", "single", *common],
                            capture_output=True, text=True, check=True)
    rows = [json.loads(single.stdout.strip().splitlines()[-1])]
    with tempfile.TemporaryDirectory(prefix="bench-distdgl-") as tmp:
        start = time.perf_counter()
        part_config = partition(config_from_dict(_config(args, {"name": "synthetic"})),
                                args.parts, Path(tmp) / "parts", say=lambda _m: None)
        partition_s = time.perf_counter() - start
        ip_config = Path(tmp) / "ip_config.txt"
        ip_config.write_text("".join(f"127.0.0.1 {free_port()}\n" for _ in range(args.parts)))
        peaks: dict = {}
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_servers, args=(stop, peaks), daemon=True)
        watcher.start()
        try:
            launch_local([sys.executable, __file__, "--role", "trainer", *common,
                          "--part-config", str(part_config), "--ip-config", str(ip_config),
                          "--out-dir", tmp], ip_config, part_config, 1, 1,
                         say=lambda _m: None)
        finally:
            stop.set()
            watcher.join()
        rows += [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("trainer*.json"))]
    print(f"DistDGL loopback benchmark (CPU, {os.cpu_count()} cores, shared machine under "
          f"load); SAGE 2x256, batch {args.batch_size}, fan-outs {args.fanouts}, "
          f"{args.batches} timed steps per process scaled to an epoch; partitioning "
          f"{partition_s:.1f} s")
    print("| process | steps/epoch | sampling s/epoch | compute s/epoch | total s/epoch | "
          "peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        scale = row["epoch_steps"] / max(1, row["steps"])
        sampling, compute = row["sampling_s"] * scale, row["compute_s"] * scale
        print(f"| {row['role']} | {row['epoch_steps']} | {sampling:.1f} | {compute:.1f} | "
              f"{sampling + compute:.1f} | {row['peak_rss_mb']:.0f} |")
    for key, value in sorted(peaks.items()):
        print(f"| {key} | | | | | {value:.0f} (sampled) |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "servers": peaks,
                                               "partition_s": partition_s}, indent=2))


if __name__ == "__main__":
    main()

"""dglkd's image path on a GPU without DGL: one short check for a lent GPU machine.

(1) Step cost: one step of the image engine (``dglkd.engine.step.train_step``, as
    benchmarks/bench_hkd.py times it), resnet32x4 -> resnet8x4 on random CIFAR-sized images,
    100 classes: KD (``ce + kd``, T=4) vs HKD+KD (HKD's paper recipe ``ce + kd + 3*hkd``,
    a memory bank of 50,000 instances, the dense instance graph), at batch 64 and 256:
    median seconds per step of interleaved rounds, the ratio, and each arm's peak memory
    (``torch.cuda.max_memory_allocated`` over one step; on the CPU: n/a).
(2) MNIST HKD+KD with ``dglkd distill`` (bundled MNIST, 1,000 labelled images, a few
    epochs, no baseline) on the device and on the CPU: the test accuracy of each.
(3) DDP over one process (NCCL on CUDA, gloo on the CPU): a CNN student under
    DistributedDataParallel learning MNIST with HKD+KD for a few steps; its CE falls.

    python benchmarks/gpu_check.py --device cuda    # on the GPU machine: within 5 minutes
    python benchmarks/gpu_check.py --device cpu     # dry run here: under 2 minutes

The dry run runs every part on less: (1) at batch 8 with one timed round, (2) for 1 + 1
epochs on the CPU alone; its numbers are no measurement. Nothing here needs DGL (the
script says whether it was imported).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from bench_hkd import step_arms
from timing import interleaved_times, median, ratio

import dglkd
import dglkd.data
from dglkd.data.images import iterate_minibatches
from dglkd.engine.parallel import backend_for
from dglkd.processes.supervisor import free_port
from dglkd.models import build_model

MIB = 2**20
REPO = Path(__file__).resolve().parents[1]
# dglkd distill on MNIST: the teacher is trained on the device too (no cache is shared).
MNIST_TRAIN = {"optimizer": "adam", "weight_decay": 0.0005, "schedule": "cosine",
               "batch_size": 32, "checkpoint_every": 100}
MNIST_CONFIG = {
    "name": "gpu_check_mnist_hkd_kd", "seed": 0, "n_runs": 1, "baseline": False,
    "data": {"name": "mnist", "train_size": 1000, "val_size": 500},
    "teacher": {"model": "cnn_small", "widths": [8, 16, 32]},
    "teacher_train": {"lr": 0.003, **MNIST_TRAIN},
    "student": {"model": "cnn_tiny"},
    "method": {"terms": {"ce": 1.0, "kd": {"weight": 1.0, "temperature": 4.0},
                         "hkd": {"weight": 1.0, "student_feature": "pool",
                                 "teacher_feature": "pool", "embed_dim": 64,
                                 "negatives": "batch"}}},
    "train": {"lr": 0.01, **MNIST_TRAIN},
    "log": {"progress": False, "tensorboard": False, "embedding_projector": False},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(step, device: torch.device) -> str:
    """The peak memory allocated during one more call of ``step``."""
    if device.type != "cuda":
        return "n/a"
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    return f"{torch.cuda.max_memory_allocated(device) / MIB:,.0f} MiB"


def step_costs(device: torch.device, batches: list[int], warmup: int, rounds: int) -> None:
    print(f"(1) training step, resnet32x4 -> resnet8x4, random 3x32x32, 100 classes, {device}; "
          f"{warmup} warm-up + {rounds} timed rounds per arm, interleaved")
    for batch in batches:
        torch.manual_seed(0)
        arms = step_arms(device, batch)
        times = interleaved_times(arms, warmup, rounds, device)
        peaks = {name: peak_mib(step, device) for name, step in arms.items()}
        for name, values in times.items():
            print(f"    batch {batch:4d} {name:7s} {median(values) * 1e3:9.1f} ms/step, "
                  f"peak {peaks[name]}")
        print(f"    batch {batch:4d} {ratio(times, 'HKD+KD', 'KD')}")
        del arms
        if device.type == "cuda":
            torch.cuda.empty_cache()


def distill_mnist(device: str, epochs: int, folder: Path) -> dict:
    """``dglkd distill`` of MNIST_CONFIG on ``device`` (``epochs`` for the teacher and for
    the student): its results.json and wall time."""
    raw = {**MNIST_CONFIG, "device": device}
    for phase in ("teacher_train", "train"):
        raw[phase] = {**raw[phase], "epochs": epochs}
    config = folder / f"mnist_{device.replace(':', '_')}.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = folder / config.stem
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dglkd", "distill", str(config), "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"dglkd distill on {device} failed:\n{done.stderr[-3000:]}")
    (results,) = out.glob("*/results.json")
    return {**json.loads(results.read_text()), "seconds": seconds}


def mnist_accuracy(device: torch.device, epochs: int) -> None:
    print("(2) dglkd distill, bundled MNIST (1,000 labelled images), cnn_small -> cnn_tiny, "
          f"HKD+KD, {epochs} + {epochs} epochs")
    devices = [str(device)] if device.type == "cpu" else [str(device), "cpu"]
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for name in devices:
            result = distill_mnist(name, epochs, Path(tmp))
            print(f"    {name:6s} teacher {100 * result['teacher']['test_acc']:.2f}, "
                  f"HKD+KD student {100 * result['student']['test_acc']:.2f} test acc, "
                  f"{result['seconds']:.0f} s")
    if device.type == "cpu":
        print("    (the device is the CPU: no second run to compare with)")


def ddp_one_process(device: torch.device, steps: int) -> None:
    backend = backend_for(device)
    print(f"(3) DDP over 1 process ({backend}), cnn_tiny student, HKD+KD on MNIST, {steps} steps")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL binds the group to the current device
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    try:
        torch.manual_seed(0)
        task = dglkd.data.load("mnist", train_size=1000, val_size=500)
        train = task.splits["train"]
        teacher = build_model("cnn_small", 10, task.image_shape, widths=[8, 16, 32]).to(device)
        student = build_model("cnn_tiny", 10, task.image_shape).to(device)
        ddp = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None)
        context = dglkd.context_for(student, teacher, task.images[train[:2]].to(device),
                                    labels=task.labels[train])
        objective = dglkd.compose(ce=1.0, kd=1.0, hkd={"negatives": "batch"},
                                  context=context).to(device)
        optimizer = torch.optim.Adam([*ddp.parameters(), *objective.parameters()], 0.01)
        teacher.eval()
        ce = []
        student_names, teacher_names = objective.required_features()  # HKD: hidden
        batches = iterate_minibatches(task, "train", 64, shuffle=True, device=device)
        for _, (images, labels, index) in zip(range(steps), batches):
            with torch.no_grad():
                knowledge = dglkd.capture(teacher, teacher_names, images)
            terms = objective(dglkd.capture(ddp, student_names, images), knowledge, labels=labels,
                              index=index)
            optimizer.zero_grad()
            sum(terms.values()).backward()  # DDP's all-reduce of the gradients
            optimizer.step()
            ce.append(float(terms["ce"].detach()))
        print(f"    CE {ce[0]:.3f} -> {ce[-1]:.3f} over {steps} steps, process group "
              f"{dist.get_backend()} of {dist.get_world_size()}")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run)")
    parser.add_argument("--ddp-steps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    dry = device.type == "cpu"
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {device} ({name}), dglkd {dglkd.__version__}"
          + (", dry run" if dry else ""))
    step_costs(device, [8] if dry else [64, 256], 1 if dry else 3, 1 if dry else 10)
    mnist_accuracy(device, 1 if dry else 3)
    ddp_one_process(device, args.ddp_steps)
    dgl_loaded = "dgl" in sys.modules
    print(f"dgl imported: {'yes' if dgl_loaded else 'no'}; "
          f"{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()

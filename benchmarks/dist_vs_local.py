"""DistDGL against one machine on Cora, seed by seed (issue 23).

The same recipe (SAGE 2x64 teacher on sampled blocks, fan-outs ``--fanouts``, batch 64,
``--teacher-epochs``; MLP 2x256 student distilled with GLNN, batch 256,
``--student-epochs``) runs for every seed twice, each in a fresh run folder and teacher
cache, as a user runs it:

* ``local``: ``dglkd distill`` on bundled Cora in one process;
* ``dist``: ``dglkd launch --local`` on Cora in ``--parts`` METIS partitions (``dglkd
  partition``), 1 server + 1 trainer per partition, on loopback ports.

Per seed it prints the teacher's and the distilled MLP's test accuracy (at the best
validation epoch) on both and their differences (dist - local). Two more columns say why
they differ:

* ``paired``: the one-machine student distilled from the *dist* run's saved teacher (the
  recipe's student phase alone, in this process). ``dist MLP - paired`` is what DistDGL's
  own student path (soft-label hand-off, batches, evaluation) costs, with the teacher
  held fixed.
* each teacher's best-validation epoch and how sharp its soft labels are (``conf``: the
  mean over all nodes of its largest softmax probability, one full-graph pass on the
  one-machine graph). The distilled MLP follows this sharpness, in both systems.

The issue's target: teacher and student within ``--band`` points of one machine on every
seed. The verdict lines print it for the independent runs and for the paired student.

    DGLBACKEND=pytorch nice -n 10 python benchmarks/dist_vs_local.py [--seeds 0 1 2 3 4] \\
        [--json out.json] [--keep DIR]

``one_machine_student`` calls the engine's ``Experiment`` directly (there is no command
that distils from given teacher weights); everything else goes through the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

os.environ.setdefault("DGLBACKEND", "pytorch")
os.environ.setdefault("OUTDATED_IGNORE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DGLKD = [sys.executable, "-m", "dglkd"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
SOURCE_CONFIG = REPO / "configs" / "cora_gcn_glnn.yaml"


def recipe(args: argparse.Namespace, seed: int, data: dict, cache: Path) -> dict:
    """The issue's recipe on ``data``, one seed."""
    return {
        "name": f"cora_{data['name']}", "seed": seed, "n_runs": 1, "device": "cpu",
        "data": data, "cache_dir": str(cache), "baseline": False,
        "teacher": {"model": "sage", "hidden": 64, "layers": 2, "dropout": 0.5},
        "teacher_train": {"epochs": args.teacher_epochs, "lr": 0.01, "weight_decay": 5e-4,
                          "batch_size": 64, "fanouts": args.fanouts,
                          "eval_batch_size": 1024, "checkpoint_every": 1000},
        "student": {"model": "mlp", "hidden": 256, "layers": 2, "dropout": 0.6},
        "method": {"name": "glnn", "lam": 0.0, "temperature": 1.0},
        "train": {"epochs": args.student_epochs, "lr": 0.01, "weight_decay": 5e-4,
                  "batch_size": 256, "eval_batch_size": 1024, "checkpoint_every": 1000},
        "log": {"progress": False, "tensorboard": False, "embedding_projector": False},
    }


def free_ports(count: int) -> list[int]:
    """Loopback ports the OS hands out, held open together so that they differ (one
    server per ip_config line uses just its PORT)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run(argv: list[str], log: Path) -> None:
    with log.open("w") as out:
        done = subprocess.run(argv, env=ENV, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        sys.exit(f"{' '.join(argv[:5])} ... failed ({done.returncode}); log {log}:\n"
                 + "\n".join(tail))


def one_run(config: dict, folder: Path, launch: list[str] | None) -> dict:
    """Run ``config`` (through ``launch`` when given) in ``folder``; its scores and the
    path of its saved teacher."""
    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = ["dglkd", "distill", str(path), "--out", str(folder / "runs")]
    run(launch + command if launch else [*DGLKD, *command[1:]], folder / "log.txt")
    run_dir = next((folder / "runs").glob(f"{config['name']}-*"))
    results = json.loads((run_dir / "results.json").read_text())
    teacher, student = results["teacher"]["runs"][0], results["student"]["runs"][0]
    return {"teacher": teacher["test_acc"], "student": student["test_acc"],
            "teacher_epoch": teacher["best_epoch"], "student_epoch": student["best_epoch"],
            "teacher_file": str(run_dir / "models" / f"teacher_seed{config['seed']}.pt")}


def confidence(config: dict, teacher_file: str) -> float:
    """Mean over Cora's nodes of the teacher's largest softmax probability (how sharp its
    soft labels are), from its saved weights in one full-graph pass on the one-machine
    graph (self loops as the engine adds them)."""
    import torch

    backend, teacher = _with_teacher(config, teacher_file)
    with torch.no_grad():
        logits = teacher.eval()(backend.train.graph, backend.train.gather("feat"))
    return float(logits.softmax(-1).max(-1).values.mean())


def _with_teacher(config: dict, teacher_file: str):
    """The engine's graph backend of ``config`` loaded for its seed, and the teacher saved
    in ``teacher_file``."""
    import torch

    from dglkd.config import config_from_dict
    from dglkd.engine.graph import GraphBackend

    cfg = config_from_dict(config)
    backend = GraphBackend(cfg, torch.device("cpu"), lambda _m: None)
    backend.load(cfg.seed)
    teacher = backend.new_model(cfg.teacher, "teacher")
    teacher.load_state_dict(torch.load(teacher_file)["model"])
    return backend, teacher


def one_machine_student(config: dict, teacher_file: str, folder: Path) -> float:
    """Test accuracy (best validation epoch) of the one-machine student phase of
    ``config`` distilled from the teacher saved in ``teacher_file``."""
    from dglkd.config import config_from_dict
    from dglkd.engine.cache import TeacherArtifact
    from dglkd.engine.run import Experiment, Teacher

    cfg = config_from_dict(config)
    experiment = Experiment.create(cfg, folder, say=lambda _m: None)
    experiment.backend.load(cfg.seed)
    teacher = experiment.backend.new_model(cfg.teacher, "teacher")
    teacher.load_state_dict(__import__("torch").load(teacher_file)["model"])
    # mini-batch teachers hand their soft labels over through files beside this entry
    artifact = TeacherArtifact(folder / "teacher.pt")
    _, _, result = experiment.student("student", cfg.seed, Teacher(teacher, {}, artifact),
                                      cfg.method.raw())
    return result["test_acc"]


def one_seed(args: argparse.Namespace, seed: int, work: Path, part_config: Path) -> dict:
    row: dict = {"seed": seed}
    local = recipe(args, seed, {"name": "cora"}, work / f"seed{seed}-local" / "cache")
    row["local"] = one_run(local, work / f"seed{seed}-local", None)
    ip_config = work / f"seed{seed}-ip_config.txt"
    ip_config.write_text("".join(f"127.0.0.1 {p}\n" for p in free_ports(args.parts)))
    dist = recipe(args, seed, {"name": "dist", "part_config": str(part_config),
                               "ip_config": str(ip_config)}, work / f"seed{seed}-dist" / "cache")
    launch = [*DGLKD, "launch", "--local", "--ip-config", str(ip_config), "--part-config",
              str(part_config), "--num-servers", "1", "--num-trainers", "1", "--"]
    row["dist"] = one_run(dist, work / f"seed{seed}-dist", launch)
    for side in ("local", "dist"):
        row[side]["teacher_confidence"] = confidence(local, row[side]["teacher_file"])
    row["paired_student"] = one_machine_student(local, row["dist"]["teacher_file"],
                                                work / f"seed{seed}-paired")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--fanouts", type=int, nargs="+", default=[10, 10])
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--student-epochs", type=int, default=80)
    parser.add_argument("--band", type=float, default=1.5,
                        help="points within which dist must stay of one machine")
    parser.add_argument("--keep", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="dist-vs-local-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    part_config = work / "parts" / f"{SOURCE_CONFIG.stem}.json"
    if not part_config.is_file():
        run([*DGLKD, "partition", str(SOURCE_CONFIG), "--parts", str(args.parts),
             "--out", str(part_config.parent)], work / "partition.txt")
    rows = []
    for seed in args.seeds:
        rows.append(one_seed(args, seed, work, part_config))
        print(f"seed {seed}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    print(table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """The per-seed Markdown table, means and the verdicts against ``args.band``."""
    columns = {
        "local teacher": lambda r: r["local"]["teacher"],
        "dist teacher": lambda r: r["dist"]["teacher"],
        "diff": lambda r: r["dist"]["teacher"] - r["local"]["teacher"],
        "local MLP": lambda r: r["local"]["student"],
        "dist MLP": lambda r: r["dist"]["student"],
        "diff ": lambda r: r["dist"]["student"] - r["local"]["student"],
        "paired MLP": lambda r: r["paired_student"],
        "dist - paired": lambda r: r["dist"]["student"] - r["paired_student"],
    }
    lines = [f"Cora, {args.parts} partitions through `dglkd launch --local` vs one machine; "
             f"SAGE teacher (fan-outs {args.fanouts}, {args.teacher_epochs} epochs) -> GLNN "
             f"MLP ({args.student_epochs} epochs); test accuracy (points) at the best "
             "validation epoch; paired MLP: one machine's student from the dist teacher; "
             "teacher epoch / conf: its best-validation epoch / mean max softmax probability",
             "", "| seed | " + " | ".join(c.strip() for c in columns)
             + " | local teacher epoch / conf | dist teacher epoch / conf |",
             "|---:|" + "---:|" * (len(columns) + 2)]
    for row in rows:
        cells = [str(row["seed"])] + [f"{100 * get(row):.1f}" for get in columns.values()]
        cells += [f"{row[side]['teacher_epoch']} / {row[side]['teacher_confidence']:.2f}"
                  for side in ("local", "dist")]
        lines.append("| " + " | ".join(cells) + " |")
    means = [f"{100 * statistics.fmean(get(r) for r in rows):.1f}" for get in columns.values()]
    lines.append("| mean | " + " | ".join(means) + " | | |")

    def worst(*names: str) -> float:
        return max(abs(100 * columns[name](r)) for r in rows for name in names)

    independent, paired = worst("diff", "diff "), worst("dist - paired")
    lines += ["", f"independent runs: largest |diff| {independent:.1f} points: "
                  f"{'within' if independent <= args.band else 'NOT within'} {args.band} on "
                  "every seed",
              f"teacher held fixed: largest |dist - paired| {paired:.1f} points: "
              f"{'within' if paired <= args.band else 'NOT within'} {args.band} on every seed"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""The ``dglkd`` command: train-teacher, distill, compare, evaluate."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from dglkd.errors import DglkdError, describe_os_error, printable

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dglkd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("config", nargs="?", help="YAML recipe (see configs/)")
        sub.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
        sub.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=50")
        sub.add_argument("--resume", metavar="RUN_DIR",
                         help="continue an interrupted run in its own folder")
        sub.add_argument("--nproc", type=int, default=1, metavar="N",
                         help="train each mini-batch graph phase in N processes on this "
                              "machine (DDP; gloo on CPU, one GPU per rank on CUDA)")
        return sub

    with_config("train-teacher", "train (and cache) the teacher of a config")
    with_config("distill", "distill: teacher (cached), student alone, distilled student")
    compare = with_config("compare", "several methods on one dataset, same teacher and seeds")
    compare.add_argument("--methods", required=True,
                         help="comma-separated labels of the config's compare section or "
                              "method names, e.g. ce,kd,lsp,hkd")
    evaluate = commands.add_parser("evaluate", help="re-evaluate the saved models of a run")
    evaluate.add_argument("run_dir")
    part = commands.add_parser("partition", help="cut a config's graph into DGL partitions "
                               "for DistDGL (data: {name: dist, part_config: ...})")
    part.add_argument("config", help="YAML recipe whose dataset and models to partition for")
    part.add_argument("--parts", type=int, required=True, help="number of partitions "
                      "(one per machine / ip_config line)")
    part.add_argument("--out", required=True, help="folder for the partitions")
    part.add_argument("--method", default="metis", choices=["metis", "random"],
                      help="partitioning algorithm (default metis; random without METIS)")
    part.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="override a config key")
    launch = commands.add_parser("launch", help="run DistDGL servers and trainers: "
                                 "dglkd launch --local ... -- dglkd distill CONFIG")
    launch.add_argument("--local", action="store_true", required=True,
                        help="every ip_config line on this host (clusters: DGL's "
                             "tools/launch.py)")
    launch.add_argument("--ip-config", required=True, help="DGL ip_config: 'IP PORT' per line")
    launch.add_argument("--part-config", required=True, help="partition config (.json)")
    launch.add_argument("--num-servers", type=int, default=1, help="servers per machine")
    launch.add_argument("--num-trainers", type=int, default=1, help="trainers per machine")
    launch.add_argument("--num-samplers", type=int, default=0,
                        help="sampler processes per trainer (DGL_NUM_SAMPLER)")
    launch.add_argument("--graph-format", default="csc", help="DGL_GRAPH_FORMAT")
    launch.add_argument("remainder", metavar="COMMAND", nargs=argparse.REMAINDER,
                        help="-- then the command every process runs")
    return parser


def _method_labels(args: argparse.Namespace) -> list[str]:
    return [m.strip() for m in getattr(args, "methods", "").split(",") if m.strip()]


def _config(args: argparse.Namespace):
    from dglkd.config import load_config
    from dglkd.engine.run import method_variants, run_config

    if args.resume:
        if args.overrides:
            raise DglkdError("--resume: a resumed run keeps its own config; drop --set")
        if args.config:
            raise DglkdError(f"--resume: a resumed run keeps its own config; drop CONFIG "
                             f"({args.config})")
        return run_config(args.resume)
    if not args.config:
        raise DglkdError(f"{args.command}: give a CONFIG file or --resume RUN_DIR")
    config = load_config(args.config, args.overrides)
    if args.command == "compare":
        method_variants(config, _method_labels(args))
    return config


def _check_nproc(config, nproc: int) -> None:
    if nproc < 1:
        raise DglkdError(f"--nproc: {nproc}; give 1 or more processes")
    if nproc > 1 and (config.data.is_image or config.train.batch_size is None
                      or config.teacher_train.batch_size is None):
        raise DglkdError(f"--nproc {nproc}: several processes split the seed nodes of "
                         "mini-batch graph phases; set train.batch_size and "
                         "teacher_train.batch_size (and use a graph dataset)")


def rank_main(argv: list[str]) -> int:
    """What each of ``--nproc N`` processes runs: the same command, as one rank."""
    return run([*argv, "--nproc", "1"])


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def run(argv: Sequence[str] | None = None) -> int:
    from dglkd.engine import parallel

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "evaluate":
        from dglkd.engine.run import evaluate_run

        evaluate_run(args.run_dir)
        return 0
    if args.command in ("partition", "launch"):
        return _dist_command(args)
    config = _config(args)
    if config.data.name == "dist":  # DistDGL before torch.distributed (DGL's order)
        return _run_dist(args, config)
    _check_nproc(config, args.nproc)
    if args.nproc > 1:
        from dglkd.processes.ranks import launch

        launch(args.nproc, rank_main, (_without_nproc(argv),), device=config.device)
        return 0
    parallel.setup_from_env(config.device)  # a rank of --nproc or of torchrun
    try:
        _run_command(args, config)
    finally:
        parallel.teardown()
    return 0


def _dist_command(args: argparse.Namespace) -> int:
    """``partition`` and ``launch`` (see dglkd.engine.partition, dglkd.engine.dist_launch)."""
    if args.command == "partition":
        from dglkd.config import load_config
        from dglkd.engine.partition import partition

        path = partition(load_config(args.config, args.overrides), args.parts, args.out,
                         args.method)
        print(f"partition config: {path}\nuse it as data: {{name: dist, part_config: {path}, "
              "ip_config: FILE}")
        return 0
    from dglkd.processes.distdgl import launch_local

    return launch_local(args.remainder, args.ip_config, args.part_config, args.num_servers,
                        args.num_trainers, args.num_samplers, args.graph_format)


def _run_dist(args: argparse.Namespace, config) -> int:
    """One process of a DistDGL run: a server (serves, then exits) or a trainer."""
    from dglkd.engine import diststore, parallel

    if args.nproc != 1:
        raise DglkdError("--nproc: dist runs get their trainers from `dglkd launch "
                         "--num-trainers`; drop --nproc")

    def body() -> int:
        diststore.initialize(config)  # a server never comes back from here
        parallel.setup_from_env(config.device)
        try:
            _run_command(args, config)
        finally:
            parallel.teardown()
        return 0

    return diststore.run_trainer(body)


def _run_command(args: argparse.Namespace, config) -> None:
    from dglkd.engine.io import remove_unstarted
    from dglkd.engine.parallel import is_main
    from dglkd.engine.run import Experiment

    experiment = (Experiment(config, Path(args.resume), say=print) if args.resume
                  else Experiment.create(config, args.out))
    if args.resume:
        print(f"resuming {args.resume}")
    try:
        if args.command == "train-teacher":
            experiment.train_teachers()
        elif args.command == "compare":
            experiment.compare(_method_labels(args))
        else:
            experiment.distill()
    except (DglkdError, OSError, MemoryError):
        if not args.resume and is_main() and remove_unstarted(experiment.run_dir):
            print(f"removed the run folder {experiment.run_dir}: the run failed before "
                  "anything was trained")
        raise


def _fail(message: str) -> int:
    print(f"dglkd: error: {printable(message)}", file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except DglkdError as exc:
        return _fail(str(exc))
    except OSError as exc:  # the machine's side: full, read-only, missing or misnamed paths
        return _fail(describe_os_error(exc))
    except MemoryError:
        return _fail("out of memory; lower the model's hidden/layers, batch_size or "
                     "eval_batch_size, or use a machine with more memory")
    except KeyboardInterrupt:
        print("dglkd: interrupted; continue with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

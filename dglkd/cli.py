"""The ``dglkd`` command: train-teacher, distill, compare, evaluate."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dglkd.errors import DglkdError

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
        return sub

    with_config("train-teacher", "train (and cache) the teacher of a config")
    with_config("distill", "distill: teacher (cached), student alone, distilled student")
    compare = with_config("compare", "several methods on one dataset, same teacher and seeds")
    compare.add_argument("--methods", required=True,
                         help="comma-separated labels of the config's compare section or "
                              "method names, e.g. ce,kd,lsp,hkd")
    evaluate = commands.add_parser("evaluate", help="re-evaluate the saved models of a run")
    evaluate.add_argument("run_dir")
    return parser


def _method_labels(args: argparse.Namespace) -> list[str]:
    return [m.strip() for m in getattr(args, "methods", "").split(",") if m.strip()]


def _experiment(args: argparse.Namespace):
    from dglkd.config import load_config
    from dglkd.engine.run import Experiment, method_variants

    if args.resume:
        if args.overrides:
            raise DglkdError("--resume: a resumed run keeps its own config; drop --set")
        return Experiment.resume(args.resume)
    if not args.config:
        raise DglkdError(f"{args.command}: give a CONFIG file or --resume RUN_DIR")
    config = load_config(args.config, args.overrides)
    if args.command == "compare":
        method_variants(config, _method_labels(args))
    return Experiment.create(config, args.out)


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "evaluate":
        from dglkd.engine.run import evaluate_run

        evaluate_run(args.run_dir)
        return 0
    experiment = _experiment(args)
    if args.command == "train-teacher":
        experiment.train_teachers()
    elif args.command == "compare":
        experiment.compare(_method_labels(args))
    else:
        experiment.distill()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except DglkdError as exc:
        print(f"dglkd: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("dglkd: interrupted; continue with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Run every config the README presents as an example, as shipped, and check that it shows
what the README says it shows. Exit 1 when one does not.

    python benchmarks/check_examples.py                  # all three (about an hour on 2 CPU cores)
    python benchmarks/check_examples.py --only mnist_hkd # one of them

Each check runs the README's command in a subprocess (``python -m dglkd ...``), reads the
run folder's ``results.json`` or ``comparison.json`` and compares mean test accuracies
(best validation epoch, over the config's own seeds).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Example:
    """A config, the README's command for it, and its claim over the run's scores."""

    config: str
    command: list[str]
    claim: str
    holds: Callable[[dict[str, float]], bool]


def distill_scores(run: Path) -> dict[str, float]:
    results = json.loads((run / "results.json").read_text())
    return {role: 100 * results[role]["test_acc"] for role in ("teacher", "baseline", "student")}


def compare_scores(run: Path) -> dict[str, float]:
    results = json.loads((run / "comparison.json").read_text())
    return {label: 100 * row["test_acc"] for label, row in results["methods"].items()}


EXAMPLES = {
    "cora_gcn_glnn": Example(
        "configs/cora_gcn_glnn.yaml", ["distill"],
        "the GLNN MLP is at least 10 points over the MLP alone (README: 59.20 -> 79.00)",
        lambda s: s["student"] >= s["baseline"] + 10),
    "cora_glnn_hkd": Example(
        "configs/cora_glnn_hkd.yaml", ["compare", "--methods", "glnn,glnn_hkd"],
        "GLNN + HKD is at least 1 point over GLNN (README: 78.84 -> 82.02)",
        lambda s: s["glnn_hkd"] >= s["glnn"] + 1),
    "mnist_hkd": Example(
        "configs/mnist_hkd.yaml", ["distill"],
        "HKD + KD is at least 0.5 points over the student alone",
        lambda s: s["student"] >= s["baseline"] + 0.5),
}


def check(name: str, example: Example, out: Path) -> bool:
    argv = [sys.executable, "-m", "dglkd", example.command[0], example.config,
            *example.command[1:], "--out", str(out / name), "--set", "log.progress=false"]
    print(f"{name}: {' '.join(argv[1:])}", flush=True)
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  FAILED to run (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        return False
    run = next(Path(line.split(": ", 1)[1]) for line in done.stdout.splitlines()
               if line.startswith("run folder: "))
    scores = (compare_scores if example.command[0] == "compare" else distill_scores)(run)
    holds = example.holds(scores)
    print(f"  {'ok' if holds else 'FAILED'}: {example.claim}; measured "
          + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)
    return holds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(EXAMPLES), action="append",
                        help="check only this example (repeatable)")
    parser.add_argument("--out", type=Path, help="where the runs go (default: a temp folder)")
    args = parser.parse_args()
    names = args.only or list(EXAMPLES)
    with tempfile.TemporaryDirectory(prefix="dglkd-examples-") as tmp:
        out = args.out or Path(tmp)
        failed = [name for name in names if not check(name, EXAMPLES[name], out)]
    print(f"{len(names) - len(failed)} of {len(names)} examples show their claim"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

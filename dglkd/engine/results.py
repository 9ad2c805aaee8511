"""Results over seeds: mean ± std, written as results.json and results.md."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from dglkd.engine.io import write_json, write_text

ROLES = ("teacher", "baseline", "student")
ROLE_TITLES = {"teacher": "teacher", "baseline": "student alone (labels only)",
               "student": "distilled student"}


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize_role(model: str, params: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-seed phase summaries (``val_acc``, ``test_acc``, ``test_acc_last``)."""
    out: dict[str, Any] = {"model": model, "params": params}
    for metric in ("test_acc", "test_acc_last", "val_acc"):
        out[metric], out[f"{metric}_std"] = mean_std([r[metric] for r in runs])
    out["runs"] = runs
    return out


def _pct(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# {results['name']}", "",
             f"dataset `{results['dataset']}`, method `{results['method']}` "
             f"(`{results['formula']}`), {results['n_runs']} seed(s) {results['seeds']}", "",
             "| role | model | params | val acc | test acc (best val) | test acc (last epoch) |",
             "|---|---|---:|---:|---:|---:|"]
    for role in ROLES:
        row = results.get(role)
        if row:
            lines.append(f"| {ROLE_TITLES[role]} | {row['model']} | {row['params']:,} | "
                         f"{_pct(row['val_acc'], row['val_acc_std'])} | "
                         f"{_pct(row['test_acc'], row['test_acc_std'])} | "
                         f"{_pct(row['test_acc_last'], row['test_acc_last_std'])} |")
    inference = results.get("inference")
    if inference:
        lines += ["", f"Inference for the same {inference['targets']} nodes: teacher "
                      f"{inference['teacher_ms']:.2f} ms, student {inference['student_ms']:.2f} ms "
                      f"→ {inference['speedup']:.1f}× faster."]
    if results.get("notes"):
        lines += [""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def write_results(run_dir: Path, results: dict[str, Any]) -> str:
    write_json(run_dir / "results.json", results)
    text = markdown(results)
    write_text(run_dir / "results.md", text)
    return text

"""Results over seeds: mean ± std, written as results.json and results.md."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from dglkd.engine.io import write_json, write_text
from dglkd.files import atomic_write

ROLES = ("teacher", "refined_teacher", "baseline", "student")
ROLE_TITLES = {"teacher": "teacher",
               "refined_teacher": "teacher + correct and smooth (what the student learns)",
               "baseline": "student alone (labels only)", "student": "distilled student"}


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
    # What a phase costs: mean wall time, the largest peak memory over the seeds.
    out["wall_s"] = mean_std([r.get("wall_s", math.nan) for r in runs])[0]
    out["peak_rss_gb"] = max((r["peak_rss_gb"] for r in runs
                              if not math.isnan(r.get("peak_rss_gb", math.nan))),
                             default=math.nan)
    out["runs"] = runs
    return out


def _costs(rows: dict[str, dict[str, Any]]) -> list[str]:
    """One line: each role's mean wall time and peak resident memory per phase."""
    parts = [f"{title} {row['wall_s']:.1f} s, {row['peak_rss_gb']:.2f} GB"
             for title, row in rows.items()
             if not math.isnan(row.get("wall_s", math.nan))]
    return ["", "Per phase (mean wall time, peak resident memory): " + "; ".join(parts) + "."] \
        if parts else []


def _pct(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _row(title: str, row: dict[str, Any]) -> str:
    return (f"| {title} | {row['model']} | {row['params']:,} | "
            f"{_pct(row['val_acc'], row['val_acc_std'])} | "
            f"{_pct(row['test_acc'], row['test_acc_std'])} | "
            f"{_pct(row['test_acc_last'], row['test_acc_last_std'])} |")


TABLE_HEAD = ["| {first} | model | params | val acc | test acc (best val) | test acc (last epoch) |",
              "|---|---|---:|---:|---:|---:|"]


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# {results['name']}", "",
             f"dataset `{results['dataset']}`, method `{results['method']}` "
             f"(`{results['formula']}`), {results['n_runs']} seed(s) {results['seeds']}", "",
             TABLE_HEAD[0].format(first="role"), TABLE_HEAD[1]]
    lines += [_row(ROLE_TITLES[role], results[role]) for role in ROLES if results.get(role)]
    lines += _costs({role: results[role] for role in ROLES if results.get(role)})
    inference = results.get("inference")
    if inference:
        lines += ["", f"Inference for the same {inference['targets']} "
                      f"{inference.get('unit', 'nodes')}: teacher "
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


def comparison_markdown(results: dict[str, Any]) -> str:
    lines = [f"# {results['name']}: methods compared", "",
             f"dataset `{results['dataset']}`, same teacher and seeds {results['seeds']} "
             "for every method", "", TABLE_HEAD[0].format(first="method"), TABLE_HEAD[1]]
    lines += [_row(label, row) for label, row in results["methods"].items()]
    lines += _costs(results["methods"])
    lines += ["", "Objectives and the constants each ran with:"] + [
        f"- {label}: `{row['formula']}` — {_constants(row.get('constants', {}))}"
        for label, row in results["methods"].items() if row["formula"]]
    return "\n".join(lines) + "\n"


def bar_chart(path: Path, results: dict[str, Any]) -> Path:
    """Test accuracy (best val) per method with std error bars, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["methods"])
    means = [100 * results["methods"][k]["test_acc"] for k in labels]
    stds = [100 * results["methods"][k]["test_acc_std"] for k in labels]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 4))
    ax.bar(labels, means, yerr=stds, capsize=4, color="#4c72b0")
    low = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0.0, low - 5), min(100.0, max(means) + 5))
    ax.set_ylabel("test accuracy (%) at best val epoch")
    ax.set_title(f"{results['name']} ({len(results['seeds'])} seeds)")
    for x, (m, s) in enumerate(zip(means, stds)):
        ax.text(x, m + s, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    try:
        # the format is named: the temp file written first has no .png suffix
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=120))
    finally:
        plt.close(fig)
    return path


def _constants(members: dict[str, Any]) -> str:
    return "; ".join(f"{label}: " + ", ".join(f"{k}={v}" for k, v in constants.items())
                     for label, constants in members.items())


def write_comparison(run_dir: Path, results: dict[str, Any]) -> str:
    write_json(run_dir / "comparison.json", results)
    text = comparison_markdown(results)
    write_text(run_dir / "comparison.md", text)
    bar_chart(run_dir / "comparison.png", results)
    return text

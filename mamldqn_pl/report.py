"""Statistics and files of the adaptation report: mean, IQM and a stratified bootstrap CI per
(initialisation, group, budget, K), and a plot of return against K and against new-task env steps."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

SUMMARY_COLUMNS = ("init", "group", "budget", "k", "n", "mean", "std", "iqm", "ci_low", "ci_high")


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50% (the lowest and highest quarter trimmed)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    cut = int(np.floor(len(x) * 0.25))
    return float(x[cut: len(x) - cut].mean())


def bootstrap_ci(values, strata=None, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, seeded so that reports are reproducible.

    With `strata` (one label per value, e.g. the task) the bootstrap is stratified as in rliable: each
    stratum's values are resampled among themselves, so every task keeps its weight in every resample.
    """
    x = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    labels = np.zeros(len(x), dtype=np.int64) if strata is None else np.unique(np.asarray(strata),
                                                                                return_inverse=True)[1]
    total = np.zeros(n_boot)
    for s in np.unique(labels):
        members = x[labels == s]
        total += members[rng.integers(0, len(members), size=(n_boot, len(members)))].sum(axis=1)
    means = total / len(x)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def summarize(rows: list[dict]) -> list[dict]:
    """Aggregate raw rows over tasks x seeds (stratified by task), for all tasks and per hidden group."""
    buckets: dict[tuple, list[tuple[float, int]]] = defaultdict(list)
    for r in rows:
        for group in ("all", r["group"]) if r["group"] else ("all",):
            buckets[(r["init"], group, r["budget"], r["k"])].append((r["return"], r["task"]))
    out = []
    for (init, group, budget, k), pairs in sorted(buckets.items()):
        x = np.asarray([v for v, _ in pairs])
        low, high = bootstrap_ci(x, strata=[t for _, t in pairs])
        out.append({"init": init, "group": group, "budget": budget, "k": k, "n": len(x), "mean": float(x.mean()),
                    "std": float(x.std()), "iqm": iqm(x), "ci_low": low, "ci_high": high})
    return out


def format_table(summary: list[dict]) -> str:
    """A markdown table, one row per (init, group, budget, K)."""
    lines = ["| init | group | budget | K | n | mean | std | IQM | 95% CI |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['init']} | {s['group']} | {s['budget']} | {s['k']} | {s['n']} | {s['mean']:.1f} | "
                     f"{s['std']:.1f} | {s['iqm']:.1f} | [{s['ci_low']:.1f}, {s['ci_high']:.1f}] |")
    return "\n".join(lines)


def _series(ax, points: dict[tuple, list[dict]], x_key: str) -> None:
    for (init, group), pts in sorted(points.items()):
        pts.sort(key=lambda s: s[x_key])
        xs = [p[x_key] for p in pts]
        style = "-" if group == "all" else (":" if group.endswith("flip") and group != "noflip" else "--")
        line, = ax.plot(xs, [p["mean"] for p in pts], style, marker="o", label=f"{init} ({group})")
        ax.fill_between(xs, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], color=line.get_color(),
                        alpha=0.12)
    ax.grid(alpha=0.3)


def plot(summary: list[dict], path: Path, budget: int, k: int, title: str = "") -> None:
    """Return against K at the main budget (left) and, with several budgets, against new-task env steps at
    the trained K (right); one line per initialisation and group, with 95% CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({s["budget"] for s in summary})
    if len({s["init"] for s in summary}) > 2:  # a comparison: one line per initialisation, all tasks
        summary = [s for s in summary if s["group"] == "all"]
    ks = sorted({s["k"] for s in summary})
    k = min(ks, key=lambda c: (abs(c - k), -c))  # the trained K, or the nearest evaluated one
    fig, axes = plt.subplots(1, 2 if len(budgets) > 1 else 1, figsize=(11 if len(budgets) > 1 else 6.5, 4.2),
                             squeeze=False)
    by_k: dict[tuple, list[dict]] = defaultdict(list)
    by_budget: dict[tuple, list[dict]] = defaultdict(list)
    for s in summary:
        if s["budget"] == budget:
            by_k[(s["init"], s["group"])].append(s)
        if s["k"] == k:
            by_budget[(s["init"], s["group"])].append(s)
    _series(axes[0][0], by_k, "k")
    axes[0][0].set_xlabel(f"inner steps K on {budget} new-task env steps")
    axes[0][0].set_ylabel("greedy episode return")
    axes[0][0].set_title(title or "adaptation on held-out tasks (mean, 95% CI)")
    axes[0][0].legend(fontsize=7, loc="center left", bbox_to_anchor=(0.0, 0.62), framealpha=0.8)
    if len(budgets) > 1:
        _series(axes[0][1], by_budget, "budget")
        axes[0][1].set_xlabel(f"new-task env steps of support data (K = {k})")
        axes[0][1].set_title("return against the new task's data")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(path: Path, columns, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_report(rows: list[dict], summary: list[dict], out_dir: Path, meta: dict, budget: int, k: int,
                 name: str = "adaptation") -> None:
    """Write NAME.csv (summary), NAME.json (summary, raw rows, settings), NAME.md and NAME.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / f"{name}.csv", SUMMARY_COLUMNS, summary)
    with open(out_dir / f"{name}.json", "w") as f:
        json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=1)
    (out_dir / f"{name}.md").write_text(format_table(summary) + "\n")
    plot(summary, out_dir / f"{name}.png", budget, k)

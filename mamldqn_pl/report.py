"""Statistics and files of the adaptation report: mean, IQM and bootstrap CI per (init, group, K)."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

SUMMARY_COLUMNS = ("init", "group", "budget", "k", "n", "mean", "std", "iqm", "ci_low", "ci_high")


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (the lowest and highest quarter trimmed)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    cut = int(np.floor(len(x) * 0.25))
    return float(x[cut: len(x) - cut].mean())


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean, seeded so reports are reproducible."""
    x = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def summarize(rows: list[dict]) -> list[dict]:
    """Aggregate raw rows over tasks x seeds, for all tasks and per hidden group (flip / noflip)."""
    buckets: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        for group in ("all", r["group"]) if r["group"] else ("all",):
            buckets[(r["init"], group, r["budget"], r["k"])].append(r["return"])
    out = []
    for (init, group, budget, k), values in sorted(buckets.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][3])):
        x = np.asarray(values)
        low, high = bootstrap_ci(x)
        out.append({"init": init, "group": group, "budget": budget, "k": k, "n": len(x), "mean": float(x.mean()),
                    "std": float(x.std()), "iqm": iqm(x), "ci_low": low, "ci_high": high})
    return out


def format_table(summary: list[dict]) -> str:
    """A markdown table, one row per (init, group, K)."""
    lines = ["| init | group | K | n | mean | std | IQM | 95% CI |", "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['init']} | {s['group']} | {s['k']} | {s['n']} | {s['mean']:.1f} | {s['std']:.1f} | "
                     f"{s['iqm']:.1f} | [{s['ci_low']:.1f}, {s['ci_high']:.1f}] |")
    return "\n".join(lines)


def plot(summary: list[dict], path: Path, title: str = "") -> None:
    """Return against K, one line per initialisation and group, with 95% CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    series: dict[tuple, list[dict]] = defaultdict(list)
    for s in summary:
        series[(s["init"], s["group"])].append(s)
    for (init, group), points in sorted(series.items()):
        points.sort(key=lambda s: s["k"])
        ks = [p["k"] for p in points]
        style = "-" if group == "all" else (":" if group == "flip" else "--")
        line, = ax.plot(ks, [p["mean"] for p in points], style, marker="o", label=f"{init} ({group})")
        ax.fill_between(ks, [p["ci_low"] for p in points], [p["ci_high"] for p in points],
                        color=line.get_color(), alpha=0.12)
    ax.set_xlabel("inner steps K on the new task's support data")
    ax.set_ylabel("greedy episode return")
    ax.set_title(title or "adaptation on held-out tasks (mean, 95% bootstrap CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], summary: list[dict], out_dir: Path, meta: dict) -> None:
    """Write adaptation.csv (summary), adaptation.json (summary, raw rows, settings) and adaptation.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "adaptation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(summary)
    with open(out_dir / "adaptation.json", "w") as f:
        json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=1)
    plot(summary, out_dir / "adaptation.png")

"""Training diagnostics of runs beside their validation curve: does a run that falls late diverge (Q-values past
their true scale, a growing meta-gradient) or does its policy fall with its values in range?

    .venv/bin/python benchmarks/train_diagnostics.py --runs lightning_logs/families/RUN ... [--k 5] [--name N]

Reads each run's metrics.csv (`train/q_taken`, `train/q_taken_absmax`, `train/theta_norm`, `train/grad_norm`,
`train/meta_loss`, logged every trainer.log_every_n_steps; `meta_val/return_k{K}` at every check) and writes
docs/results/NAME.{csv,md,png}: per run and 500 meta-steps, the means of the diagnostics and the validation return
at the check that ends the window.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from runs import ROOT, readme_table
from seeds import validation_curves

from mamldqn_pl.report import write_csv

KEYS = ("train/q_taken", "train/q_taken_absmax", "train/theta_norm", "train/grad_norm", "train/meta_loss")


def windows(run: Path, k: int, width: int = 500) -> list[dict]:
    """One row per `width` meta-steps: mean of each diagnostic, and the validation return checked at its end."""
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = dict(validation_curves(run)[k])
    out = []
    for end in sorted(val):
        inside = [r for r in rows if r.get(KEYS[0]) and end - width <= int(r["step"]) < end]
        row = {"run": run.name, "step": end, "val": val[end]}
        row |= {key.split("/")[1]: float(np.mean([float(r[key]) for r in inside])) if inside else float("nan")
                for key in KEYS}
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--every", type=int, default=2000, help="rows of the md table: one per this many steps")
    parser.add_argument("--name", default="train_diagnostics")
    parser.add_argument("--out", default=str(ROOT / "docs/results"))
    args = parser.parse_args(argv)
    rows = [r for run in args.runs for r in windows(Path(run), args.k)]
    missing = [run for run in args.runs if all(np.isnan(r["q_taken"]) for r in rows if r["run"] == Path(run).name)]
    if missing:
        raise SystemExit(f"train_diagnostics.py: no train/q_taken in {missing} (runs before the twenty-third "
                         "session did not log it)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["run", "step", "val", *(k.split("/")[1] for k in KEYS)]
    write_csv(out / f"{args.name}.csv", columns, rows)
    lines = [f"| run | step | validation at K = {args.k} | Q of taken actions (mean) | largest |Q| | theta norm | "
             "meta-gradient norm (before clipping) | meta-loss |", "|---" * 8 + "|"]
    for r in rows:
        if r["step"] % args.every == 0 or r["step"] == max(x["step"] for x in rows if x["run"] == r["run"]):
            lines.append(f"| {r['run']} | {r['step']:,} | {r['val']:.1f} | {r['q_taken']:.1f} | "
                         f"{r['q_taken_absmax']:.1f} | {r['theta_norm']:.1f} | {r['grad_norm']:.1f} | "
                         f"{r['meta_loss']:.1f} |")
    table = "\n".join(lines)
    (out / f"{args.name}.md").write_text(table + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("val", f"validation return, K = {args.k}"), ("q_taken_absmax", "largest |Q| of taken actions"),
              ("theta_norm", "theta's norm"), ("grad_norm", "meta-gradient norm (before clipping)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for run in dict.fromkeys(r["run"] for r in rows):
            mine = [r for r in rows if r["run"] == run]
            ax.plot([r["step"] for r in mine], [r[key] for r in mine], label=run[-40:])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("meta-step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / f"{args.name}.png", dpi=110)
    print(table)
    if out.resolve() == (ROOT / "docs/results").resolve():
        readme_table(args.name, table)


if __name__ == "__main__":
    main()

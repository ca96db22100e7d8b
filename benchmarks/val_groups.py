"""Validation returns per task group of runs' best and last checkpoints: where a family mixes groups (a mixed
family's members, a flip's flipped and unflipped halves) the mean over all validation tasks that training logs
hides which group a variant helps. Validation tasks only (meta_val's protocol: evaluation seeds 0-2, the checkpoint's
own support budget and exploration, EMA weights where the run kept them), so a screen decided on it never sees the
held-out tasks.

    .venv/bin/python benchmarks/val_groups.py --runs lightning_logs/families --name mixed_dyn_screen21 \
        --variants seed_cartpole_mountaincar_nstep3_anil_dyn_ema_12k_rs_meta-init ... [--ks 0 1 3 5]

A run folder is VARIANT_sSEED (families.py's naming). Writes docs/results/NAME.{csv,md,png} (and the table between
`<!-- NAME.md -->` markers in the README or docs/, where there are any).
"""

from __future__ import annotations

import argparse
import csv
import os
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from families import KS  # noqa: E402
from runs import ROOT, readme_table  # noqa: E402
from seeds import evaluate  # noqa: E402
from val_screen import runs_of  # noqa: E402

from mamldqn_pl.report import write_csv  # noqa: E402

COLUMNS = ("variant", "seed", "checkpoint", "step", "k", "group", "n", "mean")


def group_returns(checkpoint: Path, ks: list[int], episodes: int) -> tuple[int, dict[tuple[int, str], list[float]]]:
    """The checkpoint's step and its validation returns by (K, group) under meta_val's protocol (seeds.evaluate on
    the validation tasks: the EMA of theta where the run kept one, as validation plays it)."""
    step, rows = evaluate(checkpoint, "val", sorted(set(ks)), episodes)
    out: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in rows:
        out[(r["k"], r["group"] or "all")].append(r["return"])
    return step, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="lightning_logs/families")
    parser.add_argument("--variants", nargs="+", default=[])
    parser.add_argument("--name", required=True)
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS),
                        help="the Ks played (the runs' meta_val.ks, by default families.py's: the greedy episodes "
                             "of one K follow those of the Ks before it, so another list gives other returns)")
    parser.add_argument("--episodes", type=int, default=5, help="greedy episodes per task (meta_val.episodes)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--table-only", action="store_true", help="rewrite NAME.md/.png (and the markers) from "
                                                                   "NAME.csv without evaluating anything")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table_only:
        with open(out / f"{args.name}.csv") as f:
            rows = [{**r, **{c: int(r[c]) for c in ("seed", "step", "k", "n")}, "mean": float(r["mean"])}
                    for r in csv.DictReader(f)]
        write_outputs(rows, out, args.name)
        return
    if not args.variants:
        raise SystemExit("--variants: give the run names to evaluate (VARIANT of VARIANT_sSEED), or --table-only")
    rows = []
    for variant in args.variants:
        found = runs_of(Path(args.runs), variant)
        if not found:
            raise SystemExit(f"no runs {variant}_sSEED with a metrics.csv in {args.runs}")
        for run, seed in found:
            for which in ("best", "last"):
                path = run / "checkpoints" / f"{which}.ckpt"
                if not path.is_file():
                    continue
                step, returns = group_returns(path, args.ks, args.episodes)
                rows += [{"variant": variant, "seed": seed, "checkpoint": which, "step": step, "k": k, "group": g,
                          "n": len(v), "mean": float(np.mean(v))} for (k, g), v in sorted(returns.items())]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{args.name}.csv", COLUMNS, rows)
    write_outputs(rows, out, args.name)


def write_outputs(rows: list[dict], out: Path, name: str) -> None:
    table = markdown(rows)
    (out / f"{name}.md").write_text(table + "\n")
    plot(rows, out / f"{name}.png")
    if out.resolve() == (ROOT / "docs/results").resolve():
        readme_table(name, table)
    print(table)


def plot(rows: list[dict], path: Path) -> None:
    """One panel per group: each run's best and last checkpoint at the largest K played (the variants' common
    prefix left off the labels)."""
    k = max(r["k"] for r in rows)
    groups = sorted({r["group"] for r in rows})
    prefix = os.path.commonprefix(sorted({r["variant"] for r in rows}))
    prefix = prefix[:prefix.rfind("_") + 1]  # whole words only
    runs = list(dict.fromkeys((r["variant"], r["seed"], r["checkpoint"]) for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups) + 3, 0.22 * len(runs) + 1.2), sharey=True,
                             squeeze=False)
    for ax, group in zip(axes[0], groups):
        values = {(r["variant"], r["seed"], r["checkpoint"]): r["mean"] for r in rows
                  if r["group"] == group and r["k"] == k}
        ax.barh(range(len(runs)), [values.get(run, np.nan) for run in runs],
                color=["C0" if run[2] == "best" else "C1" for run in runs])
        ax.set_title(f"{group}: validation return at K = {k}", fontsize=9)
    axes[0][0].set_yticks(range(len(runs)), [f"{v[len(prefix):] or v} s{s} {c}" for v, s, c in runs], fontsize=7)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows: list[dict]) -> str:
    """One line per run and checkpoint: its step and, per K, each group's mean validation return."""
    keys = sorted({(r["k"], r["group"]) for r in rows})
    lines = ["| variant | seed | checkpoint | step | " + " | ".join(f"K = {k}, {g}" for k, g in keys) + " |",
             "|---" * (4 + len(keys)) + "|"]
    runs = list(dict.fromkeys((r["variant"], r["seed"], r["checkpoint"], r["step"]) for r in rows))
    for variant, seed, which, step in runs:
        values = {(r["k"], r["group"]): r["mean"] for r in rows
                  if (r["variant"], r["seed"], r["checkpoint"]) == (variant, seed, which)}
        cells = [f"{values[key]:.1f}" if key in values else "-" for key in keys]
        lines.append(f"| {variant} | {seed} | {which} | {step:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

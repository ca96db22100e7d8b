"""A screen decided on the validation tasks alone: per run and per variant, the validation return at K over the final
third of training (mean and standard deviation across checks, as issue 10 measures the swing), the last check, the
best check, and theta's own K = 0 return over the same third. It reads run folders (their metrics.csv and
config.yaml), so it also summarises runs that have no checkpoints here, such as those of
`benchmarks/device_seeds.sh` on a lent machine, and runs stopped before their last step (the final third is that
of the configured trainer.max_steps; the table says where each run stopped).

    .venv/bin/python benchmarks/val_screen.py --runs lightning_logs/device_s8 --name device_screen \
        --variants apt_cosine_tau_0.01 apt_cosine_multi_step ... [--reference lightning_logs/session5 apt_cosine]

A run folder is VARIANT_sSEED (seeds.py's naming). --reference adds a variant from another folder (the default's
runs), so that its seeds appear beside the screened ones.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from runs import ROOT, readme_table  # noqa: E402
from seeds import validation_curves  # noqa: E402

from mamldqn_pl.report import write_csv  # noqa: E402

COLUMNS = ("variant", "seed", "last_step", "max_steps", "val_k", "final_third_mean", "final_third_std",
           "last_check", "best_check", "k0_final_third_mean")


def summarise(run: Path, variant: str, seed: int, k: int) -> dict:
    horizon = int(yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"])
    curves = validation_curves(run)
    at_k, at_0 = curves[k], curves[0]
    final = [v for s, v in at_k if s > 2 * horizon / 3]
    spread = float(np.std(final, ddof=1)) if len(final) > 1 else float("nan")
    return {"variant": variant, "seed": seed, "last_step": at_k[-1][0], "max_steps": horizon, "val_k": k,
            "final_third_mean": float(np.mean(final)), "final_third_std": spread,
            "last_check": at_k[-1][1], "best_check": max(v for _, v in at_k),
            "k0_final_third_mean": float(np.mean([v for s, v in at_0 if s > 2 * horizon / 3])), "curve": at_k}


def runs_of(folder: Path, variant: str) -> list[tuple[Path, int]]:
    pattern = re.compile(rf"{re.escape(variant)}_s(\d+)$")
    found = [(p, int(m.group(1))) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return sorted(((p, s) for p, s in found if (p / "metrics.csv").is_file()), key=lambda x: x[1])


def pooled(rows: list[dict], variant: str) -> dict:
    mine = [r for r in rows if r["variant"] == variant]
    out = {"variant": variant, "seed": f"mean of {len(mine)}", "last_step": min(r["last_step"] for r in mine),
           "max_steps": mine[0]["max_steps"], "val_k": mine[0]["val_k"]}
    for c in COLUMNS[5:]:
        out[c] = float(np.mean([r[c] for r in mine]))
    return out


def joined(rows: list[dict], column: str) -> str:
    return ", ".join(f"{r[column]:.0f}" for r in rows)


def markdown(rows: list[dict], swing: float) -> str:
    lines = ["| variant | seeds | stopped at | final third at K: mean per seed | mean | std per seed | seeds with "
             f"std > {swing:.0f} | last check, mean | K = 0, final third |", "|---" * 9 + "|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        seeds = ", ".join(str(r["seed"]) for r in mine)
        ends = [r["last_step"] for r in mine]
        stopped = f"{min(ends):,}-{max(ends):,} of {mine[0]['max_steps']:,}"
        mean = np.mean([r["final_third_mean"] for r in mine])
        swinging = sum(r["final_third_std"] > swing for r in mine)
        last, k0 = np.mean([r["last_check"] for r in mine]), np.mean([r["k0_final_third_mean"] for r in mine])
        lines.append(f"| {variant} | {seeds} | {stopped} | {joined(mine, 'final_third_mean')} | {mean:.0f} | "
                     f"{joined(mine, 'final_third_std')} | {swinging} of {len(mine)} | {last:.0f} | {k0:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, len(variants), figsize=(3.2 * len(variants), 3.0), sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], variants):
        for r in (r for r in rows if r["variant"] == variant):
            steps, values = zip(*r["curve"])
            ax.plot(steps, values, lw=1, label=f"seed {r['seed']}")
        ax.axvspan(2 * rows[0]["max_steps"] / 3, rows[0]["max_steps"], color="0.9")
        ax.set_title(variant, fontsize=8)
        ax.set_xlabel("meta-step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel(f"validation return, K = {rows[0]['val_k']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="folder of VARIANT_sSEED run folders")
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--reference", nargs=2, action="append", default=[], metavar=("FOLDER", "VARIANT"),
                        help="a variant's runs from another folder, shown first (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds (default: all found)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--swing", type=float, default=40.0, help="issue 10's bound on the final third's std")
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", default=str(ROOT / "docs/results"),
                        help="the README table is rewritten only for this default")
    args = parser.parse_args()
    sources = [(Path(f), v) for f, v in args.reference] + [(Path(args.runs), v) for v in args.variants]
    rows = [summarise(run, variant, seed, args.k) for folder, variant in sources
            for run, seed in runs_of(folder, variant) if args.seeds is None or seed in args.seeds]
    if not rows:
        raise SystemExit(f"no runs of {', '.join(v for _, v in sources)} under {args.runs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    write_csv(out / f"{args.name}.csv", COLUMNS,
              [{c: r[c] for c in COLUMNS} for r in rows] + [pooled(rows, v) for v in variants])
    table = markdown(rows, args.swing)
    (out / f"{args.name}.md").write_text(table + "\n")
    plot(rows, out / f"{args.name}.png")
    if out.resolve() == (ROOT / "docs/results").resolve():
        readme_table(args.name, table)
    print(table)


if __name__ == "__main__":
    main()

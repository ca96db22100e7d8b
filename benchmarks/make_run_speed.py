"""Issue 13, item 4: `make run`'s work (fit + test of configs/cartpole.yaml, seed 0) at this commit against a
baseline commit, side by side: both run at the same time, one per core (or one after the other with
`--sequential`), in the same venv, so that they meet the same machine. Writes
docs/results/make_run_speed.{csv,md} and the README table between `<!-- make_run_speed.md -->`.

    .venv/bin/python benchmarks/make_run_speed.py [--baseline 436b99f] [--steps N] [--keep DIR] \\
        [--sequential] [--extra-args "--data.collection process"] [--common-args "..."]

`--keep DIR` copies this tree's run folder (checkpoints, logs, the adaptation report) to DIR: `cp
DIR/adaptation.* docs/` and `benchmarks/make_run_table.py` then give the README's `make run` table from that run.

`--common-args` are flags for every run's fit and test alike (e.g. a smaller meta-test protocol for a smoke run;
the baseline's CLI must know them).

`--sequential` runs the trees one after the other, each alone on the machine: a fit with a collection process
(`data.collection process`) needs both cores, so one run per core would starve it. `--extra-args` adds a third
run: this tree with those `mamldqn fit` flags (`--keep` then keeps that run's folder).

Each tree runs its own configs/cartpole.yaml as it stands at that commit (the default changed in the eleventh
session: 6,000 steps where the baseline's had 12,000), unless `--steps N` sets both trees' max_steps.

The baseline is checked out as a git worktree under the system's temp folder; nothing of this tree changes.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runs import ROOT, cli_in, readme_table, trained_budget, worktree

from mamldqn_pl.report import write_csv

BASELINE = "436b99f"  # main before issue 13 (third session's start)
COLUMNS = ("tree", "commit", "fit_s", "test_s", "total_s", "ratio_to_baseline", "k5_mean", "k5_ci_low", "k5_ci_high",
           "k5_flip_mean")


def make_run(tree: Path, run_dir: Path, steps: int | None, fit_args: tuple[str, ...] = (),
             common: tuple[str, ...] = ()) -> dict:
    """`make run`'s two commands, timed, with the package imported from `tree`."""
    config = ["--config", "configs/cartpole.yaml", "--run_dir", str(run_dir), *common]
    times = {}
    steps_args = ["--trainer.max_steps", str(steps)] if steps else []
    for command, extra in (("fit", [*steps_args, "--trainer.enable_progress_bar", "false", *fit_args]),
                           ("test", [])):
        start = time.time()
        cli_in(tree, command, *config, *extra)
        times[command] = time.time() - start
    with open(run_dir / "adaptation.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["init"] == "meta-init" and r["k"] == "5"]
    budget = trained_budget(rows)
    pick = {r["group"]: r for r in rows if r["budget"] == budget}
    return {"fit_s": round(times["fit"], 1), "test_s": round(times["test"], 1),
            "total_s": round(times["fit"] + times["test"], 1), "k5_mean": round(float(pick["all"]["mean"]), 1),
            "k5_ci_low": round(float(pick["all"]["ci_low"]), 1), "k5_ci_high": round(float(pick["all"]["ci_high"]), 1),
            "k5_flip_mean": round(float(pick["flip"]["mean"]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--steps", type=int, default=None,
                        help="both trees' max_steps (default: each tree's configs/cartpole.yaml)")
    parser.add_argument("--out", default=str(ROOT / "docs/results"))
    parser.add_argument("--keep", default=None, help="copy this tree's run folder here")
    parser.add_argument("--sequential", action="store_true", help="the runs one after the other, each alone")
    parser.add_argument("--extra-args", default="", help="also run this tree with these `mamldqn fit` flags")
    parser.add_argument("--common-args", default="", help="flags for every run's fit and test")
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp, worktree(args.baseline, Path(tmp) / "baseline") as base:
        label = head.strip() + (" + uncommitted changes" if dirty else "")
        trees = {"baseline": (base, args.baseline, ()), "this commit": (ROOT, label, ())}
        if args.extra_args:  # this tree's default run, and beside it the run with the flags
            trees["this commit, flags"] = (ROOT, f"{label}, {args.extra_args}", tuple(args.extra_args.split()))
        folder = {name: Path(tmp) / f"run_{i}" for i, name in enumerate(trees)}

        def run(name: str) -> dict:
            tree, _, fit_args = trees[name]
            return make_run(tree, folder[name], args.steps, fit_args, tuple(args.common_args.split()))

        with ThreadPoolExecutor(1 if args.sequential else 2) as pool:
            results = dict(zip(trees, pool.map(run, trees)))
        if args.keep:
            shutil.copytree(folder[list(trees)[-1]], args.keep, dirs_exist_ok=True)
    base_total = results["baseline"]["total_s"]
    rows = [{"tree": name, "commit": trees[name][1], **r, "ratio_to_baseline": round(r["total_s"] / base_total, 2)}
            for name, r in results.items()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "make_run_speed.csv", COLUMNS, rows)
    lines = ["| tree | fit | test | total | ratio | held-out K = 5: mean [95% CI] | flipped half |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['tree']} ({r['commit']}) | {r['fit_s']:.0f} s | {r['test_s']:.0f} s | {r['total_s']:.0f} s | "
              f"{r['ratio_to_baseline']:.2f}x | {r['k5_mean']:.0f} [{r['k5_ci_low']:.0f}, {r['k5_ci_high']:.0f}] | "
              f"{r['k5_flip_mean']:.0f} |" for r in rows]
    table = "\n".join(lines)
    (out / "make_run_speed.md").write_text(table + "\n")
    if out.resolve() == (ROOT / "docs/results").resolve():
        readme_table("make_run_speed", table)
    print(table)


if __name__ == "__main__":
    main()

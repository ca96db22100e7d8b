"""The README's `make run` table from the report that `make run` wrote.

    make run && cp lightning_logs/cartpole/adaptation.* docs/ && .venv/bin/python benchmarks/make_run_table.py

Reads docs/adaptation.csv (the summary of `mamldqn test` on the make-run checkpoint) and replaces the table between
the README's `<!-- make_run.md -->` markers: mean [95% CI] per K at the trained budget for the meta-learned
initialisation (all tasks, flipped, unflipped) and for scratch.
"""

from __future__ import annotations

import csv

from runs import ROOT, readme_table, trained_budget


def main() -> None:
    with open(ROOT / "docs/adaptation.csv") as f:
        rows = list(csv.DictReader(f))
    budget = trained_budget(rows)
    cell = {(r["init"], r["group"], r["k"]): f"{float(r['mean']):.0f} [{float(r['ci_low']):.0f}, "
            f"{float(r['ci_high']):.0f}]" for r in rows if r["budget"] == budget}
    ks = sorted({r["k"] for r in rows}, key=int)
    lines = ["| K | meta-init, all tasks | meta-init, flipped | meta-init, unflipped | scratch, all tasks |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {cell[('meta-init', 'all', k)]} | {cell[('meta-init', 'flip', k)]} | "
              f"{cell[('meta-init', 'noflip', k)]} | {cell[('scratch', 'all', k)]} |" for k in ks]
    table = "\n".join(lines)
    readme_table("make_run", table)
    print(f"budget {budget} env steps\n{table}")


if __name__ == "__main__":
    main()

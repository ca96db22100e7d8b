"""Validation returns per task group of runs' best and last checkpoints: where a family mixes groups (a mixed
family's members, a flip's flipped and unflipped halves) the mean over all validation tasks that training logs
hides which group a variant helps. Validation tasks only (meta_val's protocol: evaluation seeds 0-2, the checkpoint's
own support budget and exploration, EMA weights where the run kept them), so a screen decided on it never sees the
held-out tasks.

    .venv/bin/python benchmarks/val_groups.py --runs lightning_logs/families --name mixed_dyn_screen21 \
        --variants seed_cartpole_mountaincar_nstep3_anil_dyn_ema_12k_rs_meta-init ... [--ks 0 1 3 5]

A run folder is VARIANT_sSEED (families.py's naming). Writes docs/results/NAME.{csv,md} (and the table between
`<!-- NAME.md -->` markers in the README or docs/, where there are any).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from families import KS
from runs import ROOT, readme_table
from val_screen import runs_of

from mamldqn_pl import MetaDQNDataModule
from mamldqn_pl.evaluation import Protocol, evaluate_init
from mamldqn_pl.metainit import MetaInit
from mamldqn_pl.report import write_csv

COLUMNS = ("variant", "seed", "checkpoint", "step", "k", "group", "n", "mean")


def group_returns(checkpoint: Path, ks: list[int], episodes: int) -> tuple[int, dict[tuple[int, str], list[float]]]:
    """The checkpoint's step and its validation returns by (K, group) under meta_val's protocol."""
    init = MetaInit.load(checkpoint)
    model, data = init.model, MetaDQNDataModule(**init.data)
    protocol = Protocol.of(data.hparams, sorted(set(ks)), episodes, [0, 1, 2])
    net = model.init_net  # the EMA of theta where the run kept one: what validation plays
    rows = evaluate_init(net, dict(net.named_parameters()), data.family, data.val_tasks, model.adapt, model.inner,
                         model.hparams.gamma, protocol)
    out: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in rows:
        out[(r["k"], r["group"] or "all")].append(r["return"])
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="lightning_logs/families")
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS),
                        help="the Ks played (the runs' meta_val.ks, by default families.py's: the greedy episodes "
                             "of one K follow those of the Ks before it, so another list gives other returns)")
    parser.add_argument("--episodes", type=int, default=5, help="greedy episodes per task (meta_val.episodes)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args()
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{args.name}.csv", COLUMNS, rows)
    table = markdown(rows)
    (out / f"{args.name}.md").write_text(table + "\n")
    if out.resolve() == (ROOT / "docs/results").resolve():
        readme_table(args.name, table)
    print(table)


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

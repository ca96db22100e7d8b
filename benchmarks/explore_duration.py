"""How often random play reaches Acrobot's goal with each exploratory action held for up to N steps
(`data.explore_duration`, twenty-fourth session): what decides whether a DQN whose greedy play never reaches the
goal ever sees a success.

    .venv/bin/python benchmarks/explore_duration.py [--durations 1 3 5 8 10] [--steps 500]

32 tasks of the acrobot family (its physics ranges; the task seed of tests/test_explore_duration.py), played at
epsilon 1 through meta-training's collector for `steps` env steps each: per N, the episodes that ended (the links
swung above the bar) among those finished or cut at the step limit, and their mean return. Writes
docs/results/explore_duration.{csv,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from runs import ROOT, publish_table

from mamldqn_pl.data import Collector, ReplayBuffers
from mamldqn_pl.report import write_csv
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import make_family


def random_play(duration: int, steps: int, n_tasks: int = 32) -> list[float]:
    """Returns of every episode that finished within `steps` random env steps on each of n_tasks tasks."""
    family = make_family(name="acrobot")
    env = family.batched(family.sample(n_tasks, make_generator(1)), make_generator(2))
    collector = Collector(env, ReplayBuffers(n_tasks, steps + 1, family.obs_dim), make_generator(3), duration)
    collector.run(np.arange(n_tasks), lambda obs: torch.zeros(len(obs), family.n_actions), [1.0] * steps)
    return collector.pop_finished_returns()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--durations", type=int, nargs="+", default=[1, 3, 5, 8, 10])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "docs/results"))
    args = parser.parse_args()
    rows = []
    for duration in args.durations:
        returns = random_play(duration, args.steps)
        reached = [r for r in returns if r > -500]
        rows.append({"explore_duration": duration, "episodes": len(returns), "reached_goal": len(reached),
                     "mean_return_reached": float(np.mean(reached)) if reached else float("nan")})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "explore_duration.csv", list(rows[0]), rows)
    lines = [f"| data.explore_duration | episodes in {args.steps} steps x 32 tasks | reached the goal | "
             "their mean return |", "|---|---|---|---|"]
    lines += [f"| {r['explore_duration']} | {r['episodes']} | {r['reached_goal']} | {r['mean_return_reached']:.0f} |"
              for r in rows]
    table = "\n".join(lines)
    publish_table(out, "explore_duration", table)


if __name__ == "__main__":
    main()

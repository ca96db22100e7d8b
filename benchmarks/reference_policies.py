"""What a hand-written policy scores on a config's own MountainCar and Acrobot tasks: a reference for issue 11's
targets (what is reachable on the config's physics ranges, in 200 steps for MountainCar, 500 for Acrobot).

    .venv/bin/python benchmarks/reference_policies.py [--configs seed_cartpole_mountaincar_dynamics mountaincar ...]
        [--name reference_policies]

Neither policy learns anything. MountainCar: energy pumping, push in the direction the car moves (right when the
velocity is > 0, else left), so every swing adds energy until the car clears the hill. Acrobot: torque the way the
second joint turns (+1 when its angular velocity is > 0, else -1), which pumps energy into the swing; it was picked
in a quick check (not a committed script) among five such one-line rules on gymnasium's own Acrobot-v1, 20 episodes
each (this one -77.9; the first joint's way -500, its opposite -88.3), never on a config's tasks. The protocol
is meta-test's: every validation and held-out task of the config (its MountainCar or Acrobot tasks; a mixed
config's member of that game), 3 evaluation seeds x 5 episodes, each episode's start drawn by gymnasium's reset
with a seed of its own. Writes docs/results/NAME.{csv,md}: mean, IQM and 95% bootstrap CI over tasks x seeds per
config and task set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml
from runs import ROOT, publish_table

from mamldqn_pl import MetaDQNDataModule
from mamldqn_pl.report import summarize, write_csv
from mamldqn_pl.tasks.family import ReverseActions


def energy_pumping(obs: np.ndarray) -> int:
    """Push with the velocity (MountainCar's actions: 0 left, 1 none, 2 right)."""
    return 2 if obs[1] > 0 else 0


def swing_with_elbow(obs: np.ndarray) -> int:
    """Torque with the second joint's angular velocity (Acrobot's actions: 0 torque -1, 1 none, 2 torque +1)."""
    return 2 if obs[5] > 0 else 0


POLICIES = {"mountaincar": ("energy pumping", energy_pumping), "acrobot": ("swing with the elbow", swing_with_elbow)}


def play(env, policy, seed: int) -> float:
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        total += float(reward)
        done = terminated or truncated
    return total


def rows_of(config: str, episodes: int = 5, seeds=(0, 1, 2)) -> list[dict]:
    """One row per (task set, task, evaluation seed): the mean return of `episodes` episodes."""
    data = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())["data"]
    dm = MetaDQNDataModule(**data)
    family = dm.family
    rows = []
    for split in ("val", "test"):
        for task in getattr(dm, f"{split}_tasks"):
            member = family.members[task.member] if family.name == "mixed" else family
            if member.name not in POLICIES:
                continue
            policy_name, policy = POLICIES[member.name]
            env = member.make_env(task)
            if task.flip < 0:  # a flipped task: the policy acts in the env's own labels, knowing the flip
                env = ReverseActions(env)
            for seed in seeds:
                value = np.mean([play(env, policy, 10_000 * seed + 100 * task.index + e)
                                 for e in range(episodes)])
                rows.append({"init": f"{config}/{split}", "policy": policy_name, "group": "", "budget": 0, "k": 0,
                             "task": task.index, "seed": seed, "return": float(value)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["seed_cartpole_mountaincar_dynamics", "mountaincar",
                                                         "mountaincar_flip", "acrobot", "acrobot_flip"])
    parser.add_argument("--name", default="reference_policies")
    parser.add_argument("--out", default=str(ROOT / "docs/results"))
    args = parser.parse_args(argv)
    rows = [r for config in args.configs for r in rows_of(config)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{args.name}.csv", ["init", "policy", "group", "budget", "k", "task", "seed", "return"], rows)
    lines = ["| config | tasks | policy | n (tasks x seeds) | mean [95% CI] | IQM | worst task |",
             "|---|---|---|---|---|---|---|"]
    for s in summarize(rows):
        config, split = s["init"].split("/")
        policy = next(r["policy"] for r in rows if r["init"] == s["init"])
        worst = min(np.mean([r["return"] for r in rows if r["init"] == s["init"] and r["task"] == t])
                    for t in {r["task"] for r in rows if r["init"] == s["init"]})
        lines.append(f"| {config} | {'validation' if split == 'val' else 'held out'} | {policy} | {s['n']} | "
                     f"{s['mean']:.1f} [{s['ci_low']:.1f}, {s['ci_high']:.1f}] | {s['iqm']:.1f} | {worst:.1f} |")
    table = "\n".join(lines)
    publish_table(out, args.name, table)


if __name__ == "__main__":
    main()

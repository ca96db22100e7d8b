"""The README's "Adapt to your task" figure: a meta-trained checkpoint meets gymnasium's own CartPole-v1 (its
default constants, which no config samples exactly) with the actions reversed, and adapts on 200 env steps.

    .venv/bin/python benchmarks/adapt_demo.py [--ckpt lightning_logs/cartpole/checkpoints/best.ckpt]

Writes docs/results/adapt_demo.{csv,png}: the greedy return at every K (mean over 5 episodes, for each of 3
adaptation seeds) and one greedy episode's pole angle before (K = 0) and after adaptation; the README table between
the `<!-- adapt_demo.md -->` markers.
Uses only the public API (MetaInit.load, init.adapt, agent.act).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from runs import ROOT, readme_table

from mamldqn_pl.metainit import MetaInit
from mamldqn_pl.report import write_csv
from mamldqn_pl.tasks.family import ReverseActions


def episode(act, seed: int) -> np.ndarray:
    """One greedy episode on flipped CartPole-v1: rows of (x, theta)."""
    env = ReverseActions(gym.make("CartPole-v1"))
    obs, _ = env.reset(seed=seed)
    trace, done = [obs], False
    while not done:
        obs, _, terminated, truncated, _ = env.step(act(obs))
        trace.append(obs)
        done = terminated or truncated
    return np.asarray(trace)[:, [0, 2]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=str(ROOT / "lightning_logs/cartpole/checkpoints/best.ckpt"))
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    init = MetaInit.load(args.ckpt)
    rows, agents = [], []
    for seed in (0, 1, 2):
        agent = init.adapt(ReverseActions(gym.make("CartPole-v1")), budget=200, k=args.k, seed=seed)
        agents.append(agent)
        rows += [{"seed": seed, "k": r["k"], "return": r["return"]} for r in agent.report["returns"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "adapt_demo.csv", ["seed", "k", "return"], rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def init_act(obs):
        with torch.no_grad():
            return int(init.net(torch.as_tensor(obs, dtype=torch.float32)).argmax())

    before, after = episode(init_act, 0), episode(agents[0].act, 0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, trace in (("before (K = 0)", before), (f"after K = {args.k} steps", after)):
        left.plot(np.degrees(trace[:, 1]), label=f"{name}: {len(trace) - 1} steps")
    left.axhline(12, color="grey", ls=":")
    left.axhline(-12, color="grey", ls=":")
    left.set_xlabel("env step of one greedy episode")
    left.set_ylabel("pole angle (degrees; the episode ends at 12)")
    left.set_title("CartPole-v1, default constants, actions reversed")
    left.legend(fontsize=8)
    ks = sorted({r["k"] for r in rows})
    means = [np.mean([r["return"] for r in rows if r["k"] == k]) for k in ks]
    for seed in (0, 1, 2):
        right.plot(ks, [r["return"] for r in rows if r["seed"] == seed], "o:", alpha=0.5,
                   label=f"adaptation seed {seed}")
    right.plot(ks, means, "k-o", label="mean")
    right.set_xlabel("inner steps K on 200 env steps")
    right.set_ylabel("greedy return (5 episodes)")
    right.set_title(f"mamldqn adapt, {Path(args.ckpt).name}")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "adapt_demo.png", dpi=110)
    table = ("| K | " + " | ".join(str(k) for k in ks) + " |\n" + "|---" * (len(ks) + 1) + "|\n"
             "| greedy return, mean of 3 adaptation seeds x 5 episodes | "
             + " | ".join(f"{m:.0f}" for m in means) + " |")
    print(table)
    if out.resolve() == (ROOT / "docs/results").resolve():
        readme_table("adapt_demo", table)
    print(f"wrote adapt_demo.csv and adapt_demo.png to {out}")


if __name__ == "__main__":
    main()

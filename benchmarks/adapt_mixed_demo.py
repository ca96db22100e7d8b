"""The README's mixed-checkpoint figure: the seed example's working variant (CartPole + MountainCar in one network)
meets gymnasium's own CartPole-v1 and MountainCar-v0 (default constants) through the public API, as a user's task.

    .venv/bin/python benchmarks/adapt_mixed_demo.py [--ckpts CKPT ...] [--k 5] [--name adapt_mixed_demo]

The default checkpoints are the best ones of the three training seeds of
configs/seed_cartpole_mountaincar_dynamics.yaml that `benchmarks/families.py --configs seed_cartpole_mountaincar
--variant nstep3_anil_dyn_ema_12k_rs_mf_ln ...` trains (README, "Task families"). For each checkpoint, game and
adaptation seed (0, 1, 2): `MetaInit.adapt(gym.make(env_id), budget=200, k=K)` (the member found by the env's id),
greedy return at every K' <= K over 5 episodes. Writes docs/results/NAME.{csv,png} and the README table between the
`<!-- NAME.md -->` markers: per game and K, the mean over checkpoints and adaptation seeds and each checkpoint's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from runs import ROOT, publish_table

from mamldqn_pl.metainit import MetaInit
from mamldqn_pl.report import write_csv

RUN = ("lightning_logs/families/seed_cartpole_mountaincar_nstep3_anil_dyn_ema_12k_rs_mf_ln_meta-init_s{}/checkpoints/"
       "best.ckpt")
GAMES = ("CartPole-v1", "MountainCar-v0")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpts", nargs="+", default=[str(ROOT / RUN.format(s)) for s in range(3)])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--name", default="adapt_mixed_demo")
    parser.add_argument("--out", default=str(ROOT / "docs/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for c, path in enumerate(args.ckpts):
        init = MetaInit.load(path)
        for game in GAMES:
            for seed in args.seeds:
                agent = init.adapt(gym.make(game), budget=args.budget, k=args.k, seed=seed)
                rows += [{"ckpt": c, "path": path, "game": game, "member": agent.report["member"]["family"],
                          "seed": seed, "k": r["k"], "return": r["return"]} for r in agent.report["returns"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{args.name}.csv", ["ckpt", "path", "game", "member", "seed", "k", "return"], rows)

    ks = sorted({r["k"] for r in rows})
    ckpts = range(len(args.ckpts))

    def mean(game: str, k: int, c: int | None = None) -> float:
        return float(np.mean([r["return"] for r in rows if r["game"] == game and r["k"] == k
                              and (c is None or r["ckpt"] == c)]))

    lines = ["| game | " + " | ".join(f"K = {k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for game in GAMES:
        lines.append(f"| {game}, mean | " + " | ".join(f"{mean(game, k):.1f}" for k in ks) + " |")
        for c in ckpts:
            lines.append(f"| {game}, training seed {c} | " + " | ".join(f"{mean(game, k, c):.1f}" for k in ks)
                         + " |")
    table = "\n".join(lines)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(GAMES), figsize=(5 * len(GAMES), 3.6))
    for ax, game in zip(axes, GAMES):
        for c in ckpts:
            ax.plot(ks, [mean(game, k, c) for k in ks], "o:", alpha=0.6, label=f"training seed {c}")
        ax.plot(ks, [mean(game, k) for k in ks], "k-o", label="mean")
        ax.set_title(f"{game} (default constants), {args.budget} env steps")
        ax.set_xlabel("inner steps K")
        ax.set_ylabel(f"greedy return ({len(args.seeds)} adaptation seeds x 5 episodes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{args.name}.png", dpi=110)
    publish_table(out, args.name, table)
    print(f"wrote {args.name}.csv, .md and .png to {out}")


if __name__ == "__main__":
    main()

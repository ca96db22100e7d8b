"""Issue 11: why do inner steps destroy an Acrobot policy while they fix a flipped CartPole one?

For each checkpoint, on its validation tasks (never the test tasks) with one evaluation seed, the meta-test
protocol's support data (data.adapt_budget env steps, or --budget, of the init's play at data.epsilon_adapt; TD
targets from the frozen init) and then K = 0, 1, 3 inner steps. Per K: the support TD loss; the mean signed TD error
Q(s, a) - target on the taken actions (> 0: the init's values sit above their own targets, so every step lowers the
taken actions' values); the fraction of support states whose greedy action differs from K = 0's; the median action
gap (best minus second best Q) at K = 0; for head-only adaptation, inner lr x mean |features|^2 (the curvature of a
head step: above 2 a step overshoots the TD targets it fits, on a squared loss); and the greedy return of the
adapted network (5 episodes). Writes NAME.{csv,md,png} and, for an --out under docs/results/, the table
between its <!-- NAME.md --> markers in the README or docs/.

    .venv/bin/python benchmarks/inner_step_diagnosis.py NAME=PATH/TO.ckpt[@LR|@sgdLR|@ridgeLAMBDA] ... \\
        [--out docs/results/NAME] \\
        [--ks 0 1 3 5 20 100] [--budget 1000]

`@LR` evaluates the checkpoint with another inner learning rate than the one it was trained with (its solver
unchanged); `@sgdLR` (e.g. `@sgd0.05`) with SGD steps of rate LR, also for a checkpoint trained with the ridge
solver; `@ridgeLAMBDA` (e.g. `@ridge1.0`) with the ridge inner solver of strength LAMBDA (`model.inner_solver
ridge`) instead of SGD.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch
from runs import ROOT, readme_table

from mamldqn_pl.compare import load
from mamldqn_pl.data.collector import Collector, valid_actions
from mamldqn_pl.data.replay import ReplayBuffers
from mamldqn_pl.evaluation import Protocol, adapted_weights, collect, greedy_returns, support_batch
from mamldqn_pl.meta import batched_q, split_for_adaptation
from mamldqn_pl.report import write_csv
from mamldqn_pl.seeding import make_generator

KS = (0, 1, 3)
COLUMNS = ("name", "k", "support_td_loss", "signed_td_error", "greedy_changed", "action_gap_k0", "step_curvature",
           "return")


def diagnose(name: str, ckpt: str, seed: int = 0, ks: tuple[int, ...] = KS, budget: int | None = None) -> list[dict]:
    ckpt, _, lr = ckpt.partition("@")
    model, dm = load(ckpt)
    if lr.startswith("ridge"):
        inner = dataclasses.replace(model.inner, solver="ridge", ridge_lambda=float(lr[len("ridge"):]))
    elif lr.startswith("sgd"):
        inner = dataclasses.replace(model.inner, solver="sgd", lr=float(lr[len("sgd"):]))
    else:
        inner = dataclasses.replace(model.inner, lr=float(lr)) if lr else model.inner
    net, family, tasks = model.init_net, dm.family, dm.val_tasks
    protocol = Protocol.of(dm.hparams, ks, 5, (seed,), budget)
    params = {k: v.detach() for k, v in net.named_parameters()}
    n = len(tasks)
    generator = make_generator(seed, 7919)

    def q_init(obs):
        return torch.func.functional_call(net, params, (obs,))

    env = family.batched(list(tasks), generator)
    buffers = ReplayBuffers(n, protocol.adapt_budget, family.obs_dim, n_step=protocol.n_step)
    collect(Collector(env, buffers, generator), q_init, protocol.adapt_budget, protocol.epsilon_adapt)
    valid = valid_actions(torch.from_numpy(env.action_counts), family.n_actions).unsqueeze(1)
    obs = buffers.sequence()["obs"]
    split = split_for_adaptation(net, params, model.adapt)
    with torch.enable_grad():
        support = support_batch(split, buffers, env.action_counts, family.n_actions, q_init, model.hparams.gamma,
                                torch.device("cpu"), inner.advantage, inner.solver)
        rows, greedy0 = [], None
        curvature = float(inner.lr * support["x"].pow(2).sum(-1).mean()) if model.adapt == "head" and not inner.ridge \
            else float("nan")
        for k, fast in adapted_weights(split, inner, support, ks, n):
            with torch.no_grad():
                q = batched_q(net, params, fast, obs).masked_fill(~valid, float("-inf"))
                q_sa = q.gather(-1, support["actions"].unsqueeze(-1)).squeeze(-1)
                error = q_sa - support["target"]
                greedy = q.argmax(dim=-1)  # invalid actions are at -inf already
                greedy0 = greedy if greedy0 is None else greedy0
                if k == 0:
                    top2 = q.topk(2, dim=-1).values
                    gap = float((top2[..., 0] - top2[..., 1]).median())
            episodes = family.batched([t for t in tasks for _ in range(protocol.episodes)], generator)
            rep = torch.arange(n).repeat_interleave(protocol.episodes)
            returns = greedy_returns(net, params, {p: w[rep] for p, w in fast.items()}, episodes)
            rows.append({"name": name, "k": k, "support_td_loss": float(inner.per_task_loss(q, support).mean()),
                         "signed_td_error": float(error.mean()),
                         "greedy_changed": float((greedy != greedy0).float().mean()), "action_gap_k0": gap,
                         "step_curvature": curvature, "return": float(returns.mean())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="NAME=PATH of a checkpoint")
    parser.add_argument("--out", default=str(ROOT / "docs/results/inner_step_diagnosis"),
                        help="under docs/results/, the table between the <!-- NAME.md --> markers is rewritten too")
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS),
                        help="inner steps to measure (the first is the reference for 'greedy actions changed')")
    parser.add_argument("--budget", type=int, default=None,
                        help="support env steps per task (default: each checkpoint's data.adapt_budget)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for entry in args.checkpoints
            for row in diagnose(*entry.split("=", 1), ks=tuple(args.ks), budget=args.budget)]
    write_csv(Path(args.out + ".csv"), COLUMNS, rows)
    lines = ["| checkpoint | K | support TD loss | mean Q(s,a) - target | greedy actions changed | "
             "median action gap (K = 0) | lr x mean feature norm^2 | greedy return |", "|---" * 8 + "|"]
    lines += [f"| {r['name']} | {r['k']} | {r['support_td_loss']:.3f} | {r['signed_td_error']:+.2f} | "
              f"{r['greedy_changed']:.0%} | {r['action_gap_k0']:.3f} | "
              f"{'-' if math.isnan(r['step_curvature']) else format(r['step_curvature'], '.1f')} | "
              f"{r['return']:.0f} |" for r in rows]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    plot(rows, Path(args.out + ".png"))
    if Path(args.out).resolve().parent == (ROOT / "docs/results").resolve():  # e.g. docs/results/nav2d_k_sweep
        readme_table(Path(args.out).name, "\n".join(lines))
    print("\n".join(lines))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["name"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in names:
        mine = [r for r in rows if r["name"] == name]
        ks = [r["k"] for r in mine]
        for ax, key in zip(axes, ("support_td_loss", "greedy_changed", "return")):
            ax.plot(ks, [r[key] for r in mine], "o-", label=name)
    for ax, title in zip(axes, ("support TD loss", "greedy actions changed vs K = 0", "greedy return")):
        ax.set_xlabel("inner steps K")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

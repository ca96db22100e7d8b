"""What the dynamics solver reads off a support: the posterior over relabelings of the actions, per task.

    .venv/bin/python benchmarks/dynamics_posteriors.py PATH/TO/last.ckpt [--tasks 8] [--budget 200]

For a checkpoint trained with `model.inner_solver dynamics`: draws tasks of its family (seed 123, apart from the
training, validation and test tasks' streams), plays `budget` random steps in each, and prints each task's group,
its posterior mean relabeling matrix (row a: which canonical actions task action a is believed to be), the largest
posterior weight, and the per-relabeling outcome errors. A sharp posterior that puts every task of a group on the same
relabeling, the two groups' a flip apart, is what the README's dynamics rows rest on.
"""

from __future__ import annotations

import argparse

import torch

from mamldqn_pl.data.collector import Collector
from mamldqn_pl.data.replay import ReplayBuffers
from mamldqn_pl.evaluation import collect, support_batch
from mamldqn_pl.meta import split_for_adaptation
from mamldqn_pl.meta.dynamics import permutations, posterior, relabel_errors
from mamldqn_pl.metainit import MetaInit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--budget", type=int, default=200)
    args = parser.parse_args()
    init = MetaInit.load(args.checkpoint)
    if init.model.inner.solver != "dynamics":
        raise SystemExit(f"{args.checkpoint}: trained with model.inner_solver {init.model.inner.solver}, not dynamics")
    family, net = init.family(), init.net
    tasks = family.sample(args.tasks, torch.Generator().manual_seed(123), balanced=True)
    env = family.batched(tasks, torch.Generator().manual_seed(0))
    buffers = ReplayBuffers(len(tasks), args.budget, family.obs_dim, n_step=int(init.data.get("n_step", 1)))
    collect(Collector(env, buffers, torch.Generator().manual_seed(1)), net, args.budget, 1.0)
    split = split_for_adaptation(net, dict(net.named_parameters()), "head")
    support = support_batch(split, buffers, env.action_counts, family.n_actions, net, init.model.hparams.gamma,
                            torch.device("cpu"), solver="dynamics")  # the meta-test protocol's own support batch
    hypotheses = permutations(family.n_actions)
    with torch.no_grad():
        belief = posterior(support, hypotheses, init.model.inner.dynamics_temperature)
        errors = relabel_errors(support, hypotheses) / args.budget
    mean = torch.einsum("th,hab->tab", belief, hypotheses)
    for t, task in enumerate(tasks):
        print(f"task {t} ({task.group or 'no group'}): max posterior {belief[t].max():.2f}, relabeling "
              f"{mean[t].numpy().round(2).tolist()}, outcome errors {errors[t].numpy().round(3).tolist()}")


if __name__ == "__main__":
    main()

"""What the dynamics solver reads off a support: the posterior over relabelings of the actions, per task.

    .venv/bin/python benchmarks/dynamics_posteriors.py PATH/TO/last.ckpt [--tasks 8] [--budget 200]

For a checkpoint trained with `model.inner_solver dynamics`: draws tasks of its family (seed 123, apart from the
training, validation and test tasks' streams), plays `budget` random steps in each, and prints each task's group,
its posterior mean relabeling matrix (row a: which canonical actions task action a is believed to be), the largest
posterior weight, and the per-relabeling outcome errors. A sharp posterior that puts every task of a group on the same
relabeling, the two groups' a flip apart, is what the README's dynamics rows rest on.

    .venv/bin/python benchmarks/dynamics_posteriors.py PATH/TO/last.ckpt --validate 1e-3

--validate T also plays the checkpoint's validation tasks as training's meta_val does (evaluation seeds 0-2, the Ks
of --val-ks and the trained K, --val-episodes episodes: give the run's meta_val.ks and meta_val.episodes, the
defaults are benchmarks/families.py's, to reproduce its logged return) and prints the return at its trained K with
the trained temperature and with T: at 1e-3 the step plays the most likely relabeling instead of the posterior mean
(docs/families.md, nineteenth session). --val-epsilon E also plays them with the support collected E-greedy by the
init (1: at random) instead of at the run's data.epsilon_adapt, the trained temperature kept: which part of a change
to the support's play acts at meta-test and which through training (docs/families.md, twentieth session).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from mamldqn_pl.data import MetaDQNDataModule
from mamldqn_pl.data.collector import Collector
from mamldqn_pl.data.replay import ReplayBuffers
from mamldqn_pl.evaluation import Protocol, collect, evaluate_init, support_batch
from mamldqn_pl.meta import split_for_adaptation
from mamldqn_pl.meta.dynamics import permutations, posterior, relabel_errors
from mamldqn_pl.metainit import MetaInit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--validate", type=float, default=None, metavar="TEMPERATURE",
                        help="also the validation return at the trained K, trained temperature and this one")
    parser.add_argument("--val-epsilon", type=float, default=None, metavar="EPSILON",
                        help="also the validation return with the support played EPSILON-greedy by the init")
    parser.add_argument("--val-ks", type=int, nargs="+", default=[0, 1, 3, 5])
    parser.add_argument("--val-episodes", type=int, default=5)
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
    if args.validate is not None or args.val_epsilon is not None:
        validate(init, args.validate, args.val_epsilon, args.val_ks, args.val_episodes)


def validate(init: MetaInit, temperature: float | None, epsilon: float | None, ks: list[int], episodes: int) -> None:
    """meta_val's protocol on the run's validation tasks: as trained, then at `temperature` and with the support
    played `epsilon`-greedy (each where given; the other setting as trained)."""
    model, data = init.model, MetaDQNDataModule(**init.data)
    k = model.hparams.inner_steps
    protocol = Protocol.of(data.hparams, sorted({0, k, *ks}), episodes, [0, 1, 2])
    net = model.init_net  # the EMA of theta when the run kept one, as validation plays it
    trained = (model.inner.dynamics_temperature, protocol.epsilon_adapt)
    settings = [trained]
    if temperature is not None:
        settings.append((temperature, trained[1]))
    if epsilon is not None:
        settings.append((trained[0], epsilon))
    for t, e in settings:
        rows = evaluate_init(net, dict(net.named_parameters()), data.family, data.val_tasks, model.adapt,
                             dataclasses.replace(model.inner, dynamics_temperature=t), model.hparams.gamma,
                             dataclasses.replace(protocol, epsilon_adapt=e))
        values = [r["return"] for r in rows if r["k"] == k]
        print(f"validation at K = {k}, temperature {t:g}, support epsilon {e:g}: {sum(values) / len(values):.1f}")


if __name__ == "__main__":
    main()

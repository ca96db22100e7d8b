"""evaluate_init's `collect_params`: the weights that play the support can be held apart from the initialisation
being evaluated (val_noise.py --fixed-support), and by default they are that initialisation, as at meta-test."""

import torch
from conftest import SMALL_DATA

from mamldqn_pl import MAMLDQN, MetaDQNDataModule, evaluation
from mamldqn_pl.evaluation import Protocol, evaluate_init


def run(monkeypatch, model, dm, params, players=None):
    """The rows, and the Q-values of the policy that played the support at a fixed batch of states."""
    seen, original = [], evaluation.collect
    probe = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))

    def spy(collector, q_values, *args):
        seen.append(q_values(probe))
        return original(collector, q_values, *args)

    monkeypatch.setattr(evaluation, "collect", spy)
    protocol = Protocol(adapt_budget=20, epsilon_adapt=0.25, ks=(0, 3), episodes=2, seeds=(0,))
    got = evaluate_init(model.init_net, params, dm.family, dm.val_tasks, model.adapt, model.inner,
                        model.hparams.gamma, protocol, collect_params=players)
    return {(r["task"], r["k"]): r["return"] for r in got}, seen[0]


def test_the_support_is_played_by_collect_params_and_by_default_by_the_init(monkeypatch):
    torch.manual_seed(0)
    model, other = MAMLDQN(hidden=[16]), MAMLDQN(hidden=[16])
    dm = MetaDQNDataModule(**SMALL_DATA)
    theta = {k: v.detach() for k, v in model.net.named_parameters()}
    players = {k: v.detach() for k, v in other.net.named_parameters()}
    probe = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    plain, q_plain = run(monkeypatch, model, dm, theta)
    torch.testing.assert_close(q_plain, model.net(probe), rtol=0, atol=0)  # the default: the init plays
    same, _ = run(monkeypatch, model, dm, theta, theta)
    assert same == plain
    held, q_held = run(monkeypatch, model, dm, theta, players)
    torch.testing.assert_close(q_held, other.net(probe), rtol=0, atol=0)  # the other weights played the support
    assert all(held[key] == plain[key] for key in plain if key[1] == 0)  # K = 0: theta's greedy play, no support


def test_the_support_targets_come_from_target_params_and_by_default_from_the_init(monkeypatch):
    """`target_params` (failure_modes.py --targets-from): the support's TD targets are that network's, the support's
    data and the inner steps' starting point stay the evaluated init's."""
    torch.manual_seed(0)
    model, other = MAMLDQN(hidden=[16]), MAMLDQN(hidden=[16])
    dm = MetaDQNDataModule(**SMALL_DATA)
    theta = {k: v.detach() for k, v in model.net.named_parameters()}
    targets = {k: v.detach() for k, v in other.net.named_parameters()}
    seen, original = [], evaluation.support_batch

    def spy(split, buffers, counts, n_actions, q_target, *args):
        seen.append((buffers.sequence()["next_obs"], q_target))
        return original(split, buffers, counts, n_actions, q_target, *args)

    monkeypatch.setattr(evaluation, "support_batch", spy)
    protocol = Protocol(adapt_budget=20, epsilon_adapt=0.25, ks=(0, 3), episodes=2, seeds=(0,))

    def rows(target_params):
        got = evaluate_init(model.init_net, theta, dm.family, dm.val_tasks, model.adapt, model.inner,
                            model.hparams.gamma, protocol, target_params=target_params)
        return {(r["task"], r["k"]): r["return"] for r in got}

    plain, same, swapped = rows(None), rows(theta), rows(targets)
    assert plain == same
    (obs_plain, q_plain), _, (obs_swapped, q_swapped) = seen
    assert torch.equal(obs_plain, obs_swapped)  # the same support data
    torch.testing.assert_close(q_plain(obs_plain[0]), model.net(obs_plain[0]), rtol=0, atol=0)
    torch.testing.assert_close(q_swapped(obs_plain[0]), other.net(obs_plain[0]), rtol=0, atol=0)
    assert all(swapped[key] == plain[key] for key in plain if key[1] == 0)  # K = 0 takes no step on the targets

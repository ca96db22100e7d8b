"""Advantage learning (model.advantage_learning): non-greedy actions' TD targets fall by alpha times their gap
under theta^-, in the module's meta-training targets and in the meta-test support targets alike."""

import numpy as np
import torch
from conftest import SMALL_DATA
from test_module import fit

from mamldqn_pl import MAMLDQN
from mamldqn_pl.data.collector import Collector
from mamldqn_pl.data.replay import ReplayBuffers
from mamldqn_pl.evaluation import collect, support_batch
from mamldqn_pl.meta import advantage_learning, split_for_adaptation
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import make_family


def test_advantage_learning_by_hand():
    target = torch.tensor([1.0, 2.0, 3.0])
    q_now = torch.tensor([[3.0, 1.0, 0.0], [0.0, 5.0, 9.0], [2.0, 2.5, 7.0]])
    actions = torch.tensor([1, 1, 0])
    got = advantage_learning(target, q_now, actions, 0.5)
    assert got.tolist() == [1.0 - 0.5 * 2.0, 2.0 - 0.5 * 4.0, 3.0 - 0.5 * 5.0]
    mask = torch.tensor([True, True, False])  # a task without action 2: its value is not the max
    assert advantage_learning(target, q_now, actions, 0.5, mask).tolist() == [0.0, 2.0, 3.0 - 0.5 * 0.5]
    greedy = q_now.masked_fill(~mask, float("-inf")).argmax(-1)
    assert torch.equal(advantage_learning(target, q_now, greedy, 0.5, mask), target)  # greedy actions: unchanged


def test_module_targets_subtract_alpha_times_the_gap():
    model = MAMLDQN(hidden=[16], advantage_learning=0.8)
    trainer = fit(model, 3, **SMALL_DATA)
    data = trainer.datamodule.next_batch()["query"]
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), model.adapt)
    with torch.no_grad():
        got = model._inner_batch(split, data, None)["target"]
        next_best = model.target_net(data["next_obs"]).max(-1).values
        plain = data["rewards"] + model.hparams.gamma * (1 - data["terminated"]) * next_best
        q_now = model.target_net(data["obs"])
        gap = q_now.max(-1).values - q_now.gather(-1, data["actions"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, plain - 0.8 * gap)
    assert (gap > 0).any()
    assert all(not p.requires_grad and p.grad is None for p in model.target_net.parameters())


def test_meta_test_support_targets_carry_the_same_term():
    family = make_family("cartpole", None, True)
    tasks = family.sample(3, make_generator(5))
    generator = make_generator(0, 7919)
    env = family.batched(tasks, generator)
    buffers = ReplayBuffers(len(tasks), 30, family.obs_dim)
    net = MAMLDQN(hidden=[16]).net

    def q_init(obs):
        return net(obs)

    collect(Collector(env, buffers, generator), q_init, 30, 0.5)
    split = split_for_adaptation(net, dict(net.named_parameters()), "head")
    args = (split, buffers, np.asarray(env.action_counts), family.n_actions, q_init, 0.9, torch.device("cpu"))
    plain, with_al = support_batch(*args), support_batch(*args, advantage=0.5)
    data = buffers.sequence()
    with torch.no_grad():
        q_now = net(data["obs"])
        gap = q_now.max(-1).values - q_now.gather(-1, data["actions"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(with_al["target"], plain["target"] - 0.5 * gap)
    assert (gap > 0).any()

"""Double DQN targets (model.double_dqn): theta picks the next action, theta^- values it; a hand computation, the
n-step and masked paths, and the module's targets in a real fit, where the target network still gets no gradient."""

import torch
from conftest import SMALL_DATA
from test_module import fit

from mamldqn_pl import MAMLDQN
from mamldqn_pl.meta import split_for_adaptation, td_target, td_target_of


def test_double_dqn_target_by_hand():
    rewards, terminated = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 1.0])
    next_target = torch.tensor([[1.0, 5.0], [3.0, 2.0], [7.0, 9.0]])
    next_online = torch.tensor([[2.0, 1.0], [0.0, 4.0], [0.0, 1.0]])  # picks 0, 1, 1: not theta^-'s argmax
    plain = td_target(rewards, terminated, next_target, 0.5)
    double = td_target(rewards, terminated, next_target, 0.5, next_q_online=next_online)
    assert plain.tolist() == [1.0 + 0.5 * 5.0, 0.5 * 3.0, 2.0]
    assert double.tolist() == [1.0 + 0.5 * 1.0, 0.5 * 2.0, 2.0]  # the terminal transition never bootstraps
    # the online network agreeing with theta^- gives the plain target
    assert torch.equal(td_target(rewards, terminated, next_target, 0.5, next_q_online=next_target), plain)


def test_double_dqn_respects_the_action_mask_and_the_n_step_window():
    next_target = torch.tensor([[[1.0, 5.0, 8.0]]])
    next_online = torch.tensor([[[0.0, 1.0, 9.0]]])  # its argmax, action 2, is not one this task has
    mask = torch.tensor([[[True, True, False]]])
    batch = {"reward_window": torch.tensor([[[1.0, 1.0, 0.0]]]), "steps": torch.tensor([[2]]),
             "terminated": torch.tensor([[0.0]])}
    target = td_target_of(batch, next_target, 0.5, mask, next_q_online=next_online)
    assert target.tolist() == [[1.0 + 0.5 + 0.25 * 5.0]]  # a' = 1, the best valid action of theta


def test_module_targets_use_theta_to_pick_and_theta_minus_to_value():
    model = MAMLDQN(hidden=[16], double_dqn=True)
    trainer = fit(model, 3, **SMALL_DATA)
    assert all(not p.requires_grad and p.grad is None for p in model.target_net.parameters())
    with torch.no_grad():
        model.target_net.head.bias.add_(torch.tensor([0.0, 3.0]))  # theta^- now prefers action 1 everywhere
    batch = trainer.datamodule.next_batch()
    data = batch["support"]
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), model.adapt)
    with torch.no_grad():
        got = model._inner_batch(split, data, None)["target"]
        next_target, next_online = model.target_net(data["next_obs"]), model.net(data["next_obs"])
        picked = next_target.gather(-1, next_online.argmax(-1, keepdim=True)).squeeze(-1)
        expected = data["rewards"] + model.hparams.gamma * (1 - data["terminated"]) * picked
        plain = data["rewards"] + model.hparams.gamma * (1 - data["terminated"]) * next_target.max(-1).values
    torch.testing.assert_close(got, expected)
    assert (next_online.argmax(-1) == 0).any() and not torch.equal(got, plain)

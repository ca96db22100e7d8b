"""model.layer_norm: a weightless LayerNorm after each hidden layer. The features' scale no longer follows the
weights, it adds no parameters, every fast path still equals the torch.func reference through it, and a trained
network saves and loads with it."""

import pytest
import torch
from conftest import DEVICE
from test_fast_paths import assert_same, batches, losses_and_grads

from mamldqn_pl import MAMLDQN
from mamldqn_pl.meta import InnerLoop, QNetwork, batched_q
from mamldqn_pl.metainit import Agent


def test_features_do_not_follow_the_scale_of_the_weights():
    torch.manual_seed(0)
    obs = torch.randn(50, 4)
    normed, plain = QNetwork(4, 2, (32, 32), layer_norm=True), QNetwork(4, 2, (32, 32))
    with torch.no_grad():  # same weights in the same order: the norm has none of its own
        for a, b in zip(plain.parameters(), normed.parameters(), strict=True):
            a.copy_(b)
    before_n, before_p = normed.body(obs), plain.body(obs)
    with torch.no_grad():
        for net in (normed, plain):
            net.body[1].weight.mul_(10.0)
            net.body[1].bias.mul_(10.0)
    # scale-free: a hidden layer 10x larger changes nothing (up to the norm's epsilon)
    torch.testing.assert_close(normed.body(obs), before_n, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain.body(obs), before_p)
    pre_relu = normed.body[:3](obs)  # Scale, Linear, LayerNorm
    torch.testing.assert_close(pre_relu.mean(-1), torch.zeros(50), atol=1e-5, rtol=0)
    torch.testing.assert_close(pre_relu.var(-1, unbiased=False), torch.ones(50), atol=1e-3, rtol=0)


@pytest.mark.parametrize("adapt", ["head", "all"])
@pytest.mark.parametrize("first_order", [False, True])
def test_fast_meta_objective_equals_torch_func_through_the_norm(adapt, first_order):
    torch.manual_seed(3)
    net = QNetwork(4, 3, (32, 16), (2.4, 3.0, 0.21, 3.0), layer_norm=True).to(DEVICE)
    support, query = batches(3, 3)
    kw = dict(lr=0.05, steps=3, first_order=first_order)
    ref = losses_and_grads(net, InnerLoop(**kw, written_out=False), support, query, adapt)
    assert_same(*losses_and_grads(net, InnerLoop(**kw), support, query, adapt), *ref)


def test_batched_q_of_adapted_slots_equals_each_network_alone():
    torch.manual_seed(0)
    net = QNetwork(4, 2, (16, 16), layer_norm=True)
    params = dict(net.named_parameters())
    fast = {"head.weight": torch.randn(5, 2, 16), "head.bias": torch.randn(5, 2)}
    obs = torch.randn(5, 7, 4)
    out = batched_q(net, params, fast, obs)
    for t in range(5):
        head = torch.nn.functional.linear(net.body(obs[t]), fast["head.weight"][t], fast["head.bias"][t])
        torch.testing.assert_close(out[t], head)


def test_module_and_agent_keep_the_norm(tmp_path):
    model = MAMLDQN(obs_dim=4, n_actions=2, hidden=[16], layer_norm=True)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.net.body)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.target_net.body)
    Agent(model.net).save(tmp_path / "a.pt")
    loaded = Agent.load(tmp_path / "a.pt")
    assert loaded.net.layer_norm
    obs = torch.randn(3, 4)
    torch.testing.assert_close(loaded.net(obs), model.net(obs))

"""meta.body: the meta-step's body pass (ReLUs in place, rows flattened) is bitwise net.body's, values and
gradients, and the module's fast paths run it while the reference path runs the plain module."""

import dataclasses

import pytest
import torch

from mamldqn_pl.meta import body
from mamldqn_pl.meta.qnet import QNetwork, split_for_adaptation
from mamldqn_pl.module import MAMLDQN


@pytest.mark.parametrize("obs_dim, hidden, shape", [(4, [64, 64], (32, 256)), (6, [64, 64, 64], (8, 100)),
                                                     (2, [128, 128], (300,)), (4, [16], (5, 7))])
def test_features_are_bitwise_the_body_in_values_and_gradients(obs_dim, hidden, shape):
    torch.manual_seed(0)
    net = QNetwork(obs_dim, 3, hidden, obs_scale=[0.5 + i for i in range(obs_dim)])
    obs = torch.randn(*shape, obs_dim)
    upstream = torch.randn(*shape, hidden[-1])
    grads = []
    for run in (net.body, lambda o: body.features(net, o)):
        net.zero_grad(set_to_none=True)
        out = run(obs)
        (out * upstream).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in net.body.parameters()]))
    (ref, ref_grads), (out, out_grads) = grads
    assert out.shape == ref.shape and torch.equal(out, ref)
    assert all(torch.equal(a, b) for a, b in zip(out_grads, ref_grads))
    with torch.no_grad():
        assert torch.equal(body.q_values(net, obs), net(obs))


def test_a_body_with_layer_norm_is_run_as_it_is():
    """Only Scale + (Linear, ReLU) pairs are rewritten; anything else (here LayerNorm) is net.body itself."""
    torch.manual_seed(0)
    net = QNetwork(4, 2, [8, 8], layer_norm=True)
    obs = torch.randn(3, 5, 4)
    assert body._linears(net) is None
    assert torch.equal(body.features(net, obs), net.body(obs))


def test_the_body_does_not_change_what_it_reads():
    """relu_ overwrites the products, never the observations or the weights."""
    torch.manual_seed(0)
    net = QNetwork(4, 2, [8, 8])
    obs = torch.randn(6, 4)
    before = [obs.clone(), *[p.detach().clone() for p in net.parameters()]]
    body.features(net, obs)
    assert all(torch.equal(a, b) for a, b in zip(before, [obs, *net.parameters()]))


def test_the_module_runs_the_rewritten_body_on_its_fast_paths_only(monkeypatch):
    """The fast paths (written_out) encode with body.features and take theta^-'s values with body.q_values; the
    reference (written_out=False) runs the plain modules."""
    torch.manual_seed(0)
    model = MAMLDQN(algorithm="anil", hidden=[16, 16])
    calls = []
    monkeypatch.setattr("mamldqn_pl.meta.qnet.features", lambda net, obs: calls.append("features") or net.body(obs))
    monkeypatch.setattr("mamldqn_pl.module.body_q_values", lambda net, obs: calls.append("q") or net(obs))
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), "head", fast_body=True)
    split.encode(torch.zeros(2, 4))
    assert calls == ["features"]
    model._theta_minus()(torch.zeros(2, 4))
    assert calls == ["features", "q"]
    model.inner = dataclasses.replace(model.inner, written_out=False)
    assert model._theta_minus() is model.target_net
    plain = split_for_adaptation(model.net, dict(model.net.named_parameters()), "head")
    assert plain.encode is model.net.body


@pytest.mark.parametrize("first_order", [False, True])
def test_the_meta_step_is_bitwise_what_it_was_with_the_plain_body(monkeypatch, first_order):
    """The default config's meta-objective and meta-gradient (32 tasks, 128 + 128 rows) with the rewritten body
    against the same fast path with net.body and target_net's own forward: equal bit for bit, so runs are too."""
    torch.manual_seed(0)
    model = MAMLDQN(algorithm="anil", first_order=first_order)

    def part():  # the shape of `make bench`'s (e) rows
        return {"obs": torch.randn(32, 128, 4), "actions": torch.randint(2, (32, 128)), "rewards": torch.ones(32, 128),
                "next_obs": torch.randn(32, 128, 4), "terminated": (torch.rand(32, 128) < 0.05).float()}

    batch = {"support": part(), "query": part()}

    def meta_grad():
        loss = model.meta_objective(batch, with_pre=False)[0]
        return [loss.detach(), *torch.autograd.grad(loss, list(model.net.parameters()))]

    rewritten = meta_grad()
    monkeypatch.setattr("mamldqn_pl.meta.qnet.features", lambda net, obs: net.body(obs))
    monkeypatch.setattr("mamldqn_pl.module.body_q_values", lambda net, obs: net(obs))
    assert all(torch.equal(a, b) for a, b in zip(rewritten, meta_grad()))

"""model.query_target adapted: the query's TD targets come from theta_i^-, theta^- after the K inner steps on task i's
support (the seed's task-specific target network). Checked against a hand computation with the plain torch.func
inner loop, for head-only and full-network adaptation; K = 0 gives the shared targets; theta^- is never changed
and gets no gradient; a meaningless combination is refused."""

import pytest
import torch
from conftest import SMALL_DATA
from test_module import fit

from mamldqn_pl import MAMLDQN
from mamldqn_pl.errors import ConfigError
from mamldqn_pl.meta import InnerLoop, split_for_adaptation


def trained(algorithm: str, query_target: str, inner_steps: int = 2, n_actions: int = 2, double_dqn: bool = False,
            **data):
    """A module after a few real meta-steps (so theta^- differs from theta) and a fresh meta-batch of its data."""
    torch.manual_seed(0)
    model = MAMLDQN(n_actions=n_actions, hidden=[16], algorithm=algorithm, inner_steps=inner_steps,
                    query_target=query_target, double_dqn=double_dqn)
    trainer = fit(model, 3, **{**SMALL_DATA, **data})
    return model, trainer.datamodule.next_batch()


def best(values: torch.Tensor, missing: torch.Tensor | None) -> torch.Tensor:
    """The max over the actions a task has."""
    return (values if missing is None else values.masked_fill(missing, float("-inf"))).max(-1).values


def by_hand(model: MAMLDQN, batch: dict) -> torch.Tensor:
    """theta^- adapted per task with the reference inner loop (vmap of grad) on the support's theta^- targets, then
    r + gamma (1 - terminated) max_a Q(s'; theta_i^-) on the query."""
    target_net, gamma = model.target_net, model.hparams.gamma
    split = split_for_adaptation(target_net, dict(target_net.named_parameters()), model.adapt)
    reference = InnerLoop(lr=model.hparams.inner_lr, steps=model.hparams.inner_steps, written_out=False)
    s, q = batch["support"], batch["query"]
    targets = []
    for i in range(s["obs"].shape[0]):
        missing = None if "action_mask" not in batch else ~batch["action_mask"][i]
        with torch.no_grad():
            y = s["rewards"][i] + gamma * (1 - s["terminated"][i]) * best(target_net(s["next_obs"][i]), missing)
        support = {"x": split.encode(s["obs"][i]).detach(), "actions": s["actions"][i], "target": y}
        fast = {k: v.detach() for k, v in reference.adapt(split.q_fn, split.fast, support).items()}
        with torch.no_grad():
            next_q = split.q_fn(fast, split.encode(q["next_obs"][i]))
            targets.append(q["rewards"][i] + gamma * (1 - q["terminated"][i]) * best(next_q, missing))
    return torch.stack(targets)


@pytest.mark.parametrize("algorithm", ["anil", "maml", "fomaml"])
def test_adapted_query_targets_equal_a_hand_computation(algorithm):
    model, batch = trained(algorithm, "adapted")
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), model.adapt)
    support, query = model._support_and_query(split, batch)
    expected = by_hand(model, batch)
    torch.testing.assert_close(query["target"], expected, rtol=1e-5, atol=1e-5)
    shared = MAMLDQN._inner_batch(model, split, batch["query"], None)["target"]
    assert not torch.allclose(query["target"], shared)  # the K steps moved theta_i^- away from theta^-
    assert not query["target"].requires_grad and torch.equal(support["target"], MAMLDQN._inner_batch(
        model, split, batch["support"], None)["target"])  # the support's targets stay theta^-'s


def masked(values: torch.Tensor, missing: torch.Tensor | None) -> torch.Tensor:
    return values if missing is None else values.masked_fill(missing, float("-inf"))


@pytest.mark.parametrize("algorithm", ["anil", "maml"])
def test_double_dqn_adapted_targets_take_a_prime_from_adapted_theta(algorithm):
    """Support targets as Double DQN builds them (a' from theta, value from theta^-); theta and theta^- both take the
    K reference steps on them; the query's a' is adapted theta's greedy action, its value adapted theta^-'s."""
    model, batch = trained(algorithm, "adapted", double_dqn=True)
    net, target_net, gamma = model.net, model.target_net, model.hparams.gamma
    with torch.no_grad():  # theta's head reversed, so that its greedy choice is not theta^-'s
        head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.weight.neg_()
        head.bias.neg_()
    reference = InnerLoop(lr=model.hparams.inner_lr, steps=model.hparams.inner_steps, written_out=False)
    split_t = split_for_adaptation(target_net, dict(target_net.named_parameters()), model.adapt)
    split_o = split_for_adaptation(net, {k: v.detach() for k, v in net.named_parameters()}, model.adapt)
    s, q = batch["support"], batch["query"]
    expected = []
    for i in range(s["obs"].shape[0]):
        with torch.no_grad():
            pick = net(s["next_obs"][i]).argmax(-1, keepdim=True)
            y = s["rewards"][i] + gamma * (1 - s["terminated"][i]) * target_net(s["next_obs"][i]).gather(-1, pick)[:, 0]
        fast = {}
        for name, split in (("t", split_t), ("o", split_o)):
            support = {"x": split.encode(s["obs"][i]).detach(), "actions": s["actions"][i], "target": y}
            fast[name] = {k: v.detach() for k, v in reference.adapt(split.q_fn, split.fast, support).items()}
        with torch.no_grad():
            a = split_o.q_fn(fast["o"], split_o.encode(q["next_obs"][i])).argmax(-1, keepdim=True)
            value = split_t.q_fn(fast["t"], split_t.encode(q["next_obs"][i])).gather(-1, a)[:, 0]
            expected.append(q["rewards"][i] + gamma * (1 - q["terminated"][i]) * value)
    split = split_for_adaptation(net, dict(net.named_parameters()), model.adapt)
    query = model._support_and_query(split, batch)[1]
    torch.testing.assert_close(query["target"], torch.stack(expected), rtol=1e-5, atol=1e-5)
    single = by_hand(model, batch)  # the max over theta_i^-'s own values: never below the Double DQN value
    assert bool((single >= query["target"] - 1e-5).all()) and not torch.allclose(single, query["target"])


def test_zero_inner_steps_give_the_shared_targets():
    model, batch = trained("anil", "adapted", inner_steps=0)
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), model.adapt)
    query = model._support_and_query(split, batch)[1]
    torch.testing.assert_close(query["target"], model._inner_batch(split, batch["query"], None)["target"])


def test_theta_minus_is_untouched_and_gets_no_gradient():
    model, batch = trained("anil", "adapted")
    before = {k: v.clone() for k, v in model.target_net.state_dict().items()}
    loss = model.meta_objective(batch)[0]
    loss.backward()
    assert all(torch.equal(v, before[k]) for k, v in model.target_net.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in model.target_net.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.net.parameters())


def test_masked_family_keeps_missing_actions_out_of_the_adapted_max():
    from test_mixed import MEMBERS
    model, batch = trained("anil", "adapted", n_actions=3, family="mixed", members=MEMBERS)
    assert not batch["action_mask"].all()
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), model.adapt)
    query = model._support_and_query(split, batch)[1]
    torch.testing.assert_close(query["target"], by_hand(model, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, needle", [
    ({"query_target": "online"}, "model.query_target: 'online'; allowed: shared, adapted"),
    ({"query_target": "adapted", "algorithm": "multitask"}, "has no meaning for algorithm multitask"),
    ({"query_target": "adapted", "algorithm": "reptile"}, "has no meaning for algorithm reptile"),
])
def test_bad_query_target_is_refused(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        MAMLDQN(**kwargs)

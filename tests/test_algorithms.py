"""The algorithm variants (issue 4) and the statistics of the report, each checked against what it claims."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import SMALL_DATA

from mamldqn_pl import MAMLDQN, MetaDQNDataModule, TargetNetworkSync
from mamldqn_pl.errors import ConfigError
from mamldqn_pl.meta import InnerLoop, split_for_adaptation, td_loss
from mamldqn_pl.report import bootstrap_ci, iqm


def real_batch(model: MAMLDQN, seed: int = 0) -> dict:
    pl.seed_everything(seed)
    dm = MetaDQNDataModule(**SMALL_DATA)
    dm._build(rank=0)
    dm.attach_policy(model.q_values, lambda: 0.5)
    return dm.next_batch()


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil", "metasgd", "reptile", "multitask"])
def test_each_algorithm_trains_and_changes_the_parameters(algorithm):
    pl.seed_everything(0)
    model = MAMLDQN(hidden=[16], algorithm=algorithm, inner_steps=2, meta_lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = pl.Trainer(max_steps=3, limit_train_batches=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[TargetNetworkSync()])
    trainer.fit(model, datamodule=MetaDQNDataModule(**SMALL_DATA))
    assert trainer.global_step == 3
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_anil_adapts_the_head_only():
    model = MAMLDQN(hidden=[16], algorithm="anil")
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), model.adapt)
    assert set(split.fast) == {"head.weight", "head.bias"}
    batch = real_batch(model)
    support = model._inner_batch(split, batch["support"], batch["action_mask"])
    one = {k: v[0] for k, v in support.items()}
    adapted = model.inner.adapt(split.q_fn, split.fast, one)
    assert set(adapted) == {"head.weight", "head.bias"}  # the body is not among the inner loop's weights
    assert not torch.equal(adapted["head.weight"], split.fast["head.weight"])


def test_metasgd_learning_rates_get_gradients_and_stay_positive():
    model = MAMLDQN(hidden=[16], algorithm="metasgd", inner_steps=2, inner_lr=0.05, meta_lr=0.5)
    assert model.log_inner_lr.shape == (2, 4)  # per step, per weight tensor of the full network
    opt = model.configure_optimizers()
    batch = real_batch(model)
    for _ in range(5):  # large outer steps push some rates down hard
        opt.zero_grad()
        loss, _, _ = model.meta_objective(batch)
        loss.backward()
        assert model.log_inner_lr.grad is not None and model.log_inner_lr.grad.abs().sum() > 0
        opt.step()
        rates = model.inner.step_sizes(dict.fromkeys(["a", "b", "c", "d"]), 0)
        assert all(float(r.detach()) > 0 for r in rates.values())
    assert not torch.allclose(model.log_inner_lr.exp(), torch.full((2, 4), 0.05))


@pytest.mark.parametrize("eps", [1e-8, 1e-4])
def test_adam_eps_scales_the_first_outer_step_by_the_gradient(eps):
    """Adam's first step is meta_lr * g / (|g| + eps): with a large eps, small meta-gradients move theta less."""
    model = MAMLDQN(hidden=[16], algorithm="anil", meta_lr=0.01, adam_eps=eps)
    opt = model.configure_optimizers()
    assert opt.param_groups[0]["eps"] == eps
    before = {k: v.detach().clone() for k, v in model.net.named_parameters()}
    loss, _, _ = model.meta_objective(real_batch(model))
    loss.backward()
    grads = {k: v.grad.clone() for k, v in model.net.named_parameters()}
    opt.step()
    for k, v in model.net.named_parameters():
        expected = before[k] - 0.01 * grads[k] / (grads[k].abs() + eps)
        torch.testing.assert_close(v.detach(), expected, rtol=1e-5, atol=1e-7)


def test_reptile_outer_update_equals_its_formula():
    torch.manual_seed(0)
    model = MAMLDQN(hidden=[8], algorithm="reptile", inner_steps=2, inner_lr=0.1, meta_lr=0.5, grad_clip=0.0)
    batch = real_batch(model)
    theta = {k: v.detach().clone() for k, v in model.net.named_parameters()}
    # by hand: two SGD steps per task with plain autograd, then theta + eps * (mean adapted - theta)
    with torch.no_grad():
        next_q = model.target_net(batch["support"]["next_obs"]).max(-1).values
        target = batch["support"]["rewards"] + 0.99 * (1 - batch["support"]["terminated"]) * next_q
    adapted = []
    for t in range(batch["support"]["obs"].shape[0]):
        w = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        for _ in range(2):
            q = torch.func.functional_call(model.net, w, (batch["support"]["obs"][t],))
            loss = td_loss(q, batch["support"]["actions"][t], target[t])
            grads = torch.autograd.grad(loss, list(w.values()))
            w = {k: (v - 0.1 * g).detach().requires_grad_(True) for (k, v), g in zip(w.items(), grads)}
        adapted.append(w)
    expected = {k: theta[k] + 0.5 * (torch.stack([a[k] for a in adapted]).mean(0) - theta[k]) for k in theta}
    opt = model.configure_optimizers()
    surrogate, _, _ = model.meta_objective(batch)
    surrogate.backward()
    opt.step()
    for k, v in model.net.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k].detach(), rtol=0, atol=1e-6)


def test_multitask_takes_no_inner_step(monkeypatch):
    model = MAMLDQN(hidden=[16], algorithm="multitask")
    batch = real_batch(model)

    def forbidden(*args, **kwargs):
        raise AssertionError("multitask must not adapt")

    monkeypatch.setattr(InnerLoop, "step", forbidden)
    loss, pre, post = model.meta_objective(batch)
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), model.adapt)
    both = {k: torch.cat([batch["support"][k], batch["query"][k]], dim=1) for k in batch["support"]}
    data = model._inner_batch(split, both, batch["action_mask"])
    direct = torch.stack([td_loss(model.net(both["obs"][t]), data["actions"][t], data["target"][t])
                          for t in range(both["obs"].shape[0])]).mean()
    torch.testing.assert_close(loss, direct)
    assert torch.equal(pre, post)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(algorithm="anil", adapt="all"), "model.adapt: 'all' contradicts model.algorithm anil"),
    (dict(algorithm="fomaml", first_order=False), "model.first_order: False contradicts model.algorithm fomaml"),
    (dict(algorithm="reptile", adapt="head"), "contradicts model.algorithm reptile"),
    (dict(algorithm="reptile", inner_steps=1), "Reptile needs at least 2"),
])
def test_contradicting_algorithm_settings_are_refused(kwargs, needle):
    with pytest.raises(ConfigError, match=None) as err:
        MAMLDQN(**kwargs)
    assert needle in str(err.value)


def test_bootstrap_ci_covers_the_known_mean_of_a_known_distribution():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(100):
        sample = rng.normal(5.0, 2.0, size=60)
        low, high = bootstrap_ci(sample, seed=trial)
        covered += low <= 5.0 <= high
    assert 88 <= covered <= 99  # a 95% interval, 100 seeded trials
    strata = np.repeat(np.arange(20), 3)
    low, high = bootstrap_ci(rng.normal(5.0, 2.0, size=60) + strata, strata=strata)
    assert low < 5.0 + 9.5 < high  # the mean of the task offsets 0..19 is 9.5


def test_stratified_bootstrap_keeps_every_stratum():
    values = np.array([0.0, 0.0, 0.0, 100.0, 100.0, 100.0])
    low, high = bootstrap_ci(values, strata=[0, 0, 0, 1, 1, 1])
    assert low == high == 50.0  # no within-stratum spread: every resample has mean 50
    low, high = bootstrap_ci(values)
    assert low < 50.0 < high


def test_iqm_of_known_arrays():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5
    assert iqm([-1000, 2, 3, 4, 5, 6, 7, 1000]) == 4.5
    assert iqm([3.0, 3.0, 3.0, 3.0]) == 3.0

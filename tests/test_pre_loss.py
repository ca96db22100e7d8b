"""model.pre_loss_weight: theta's own query TD loss joins the meta-objective. Its meta-gradient is that of the
adapted loss plus lambda times the unadapted one, for both reductions; 0 leaves the objective as it was; the
algorithms without an adapted objective refuse it."""

import pytest
import torch
from conftest import SMALL_DATA
from test_module import fit

from mamldqn_pl import MAMLDQN
from mamldqn_pl.errors import ConfigError
from mamldqn_pl.meta import split_for_adaptation


def grads(model: MAMLDQN, loss: torch.Tensor) -> list[torch.Tensor]:
    return torch.autograd.grad(loss, list(model.net.parameters()))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("algorithm", ["anil", "maml"])
def test_meta_gradient_is_adapted_plus_lambda_times_unadapted(reduction, algorithm):
    torch.manual_seed(0)
    model = MAMLDQN(hidden=[16], algorithm=algorithm, meta_reduction=reduction, pre_loss_weight=0.7)
    batch = fit(model, 2, **SMALL_DATA).datamodule.next_batch()
    loss, pre, post = model.meta_objective(batch)
    plain = MAMLDQN(hidden=[16], algorithm=algorithm, meta_reduction=reduction)
    plain.load_state_dict(model.state_dict())
    plain_loss, plain_pre, plain_post = plain.meta_objective(batch)
    torch.testing.assert_close(post, plain_post)
    torch.testing.assert_close(pre, plain_pre)  # the logged pre loss is the same quantity
    reduce = torch.sum if reduction == "sum" else torch.mean
    torch.testing.assert_close(loss, plain_loss + 0.7 * reduce(pre))
    split = split_for_adaptation(plain.net, dict(plain.net.named_parameters()), plain.adapt)
    support, query = plain._support_and_query(split, batch)
    unadapted = reduce(plain.inner.losses_before(split.q_fn, split.fast, query))
    extra = grads(plain, unadapted)
    assert any(g.abs().sum() > 0 for g in extra)  # the extra term really moves theta
    expected = [a + 0.7 * b for a, b in zip(grads(plain, plain.meta_objective(batch)[0]), extra)]
    for got, want in zip(grads(model, model.meta_objective(batch)[0]), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_zero_weight_is_the_plain_objective():
    torch.manual_seed(0)
    model = MAMLDQN(hidden=[16])
    batch = fit(model, 2, **SMALL_DATA).datamodule.next_batch()
    loss, _, post = model.meta_objective(batch)
    assert torch.equal(loss, post.mean())


@pytest.mark.parametrize("algorithm", ["multitask", "reptile"])
def test_algorithms_without_an_adapted_objective_refuse_it(algorithm):
    with pytest.raises(ConfigError, match="pre_loss_weight: 0.5 has no meaning for algorithm"):
        MAMLDQN(algorithm=algorithm, pre_loss_weight=0.5)
    with pytest.raises(ConfigError, match="must be >= 0"):
        MAMLDQN(pre_loss_weight=-1.0)

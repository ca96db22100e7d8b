"""The fast paths of InnerLoop.meta_losses equal the torch.func reference (vmap of grad): the written-out ANIL
meta-objective (meta.head) and the per-task-weights autograd path of full-network adaptation. Per-task losses and
meta-gradients (every parameter, the body's through the features, Meta-SGD's rates), first and second order,
every loss option, and through the module on a real mixed-family batch with action masks.

MAMLDQN_TEST_DEVICE=cuda runs them on a GPU (the CUDA kernels of the same paths; see README, "GPU")."""

import dataclasses

import pytest
import torch
from conftest import DEVICE, to_device
from test_meta import make_batches
from test_mixed import MEMBERS

from mamldqn_pl import MAMLDQN, MetaDQNDataModule
from mamldqn_pl.meta import InnerLoop, QNetwork, split_for_adaptation

T, N, M = 6, 20, 28


def batches(seed: int, n_actions: int):
    """Obs and targets large enough that TD errors fall both inside and outside Huber's |e| < 1."""
    support, query = make_batches(seed, n_actions, obs_scale=2.0, target_scale=3.0, tasks=T, n_support=N, n_query=M)
    return to_device(support), to_device(query)


def losses_and_grads(net: QNetwork, inner: InnerLoop, support: dict, query: dict, adapt: str = "head"):
    params = dict(net.named_parameters())
    split = split_for_adaptation(net, params, adapt)

    def part(d):
        return {"x": split.encode(d["obs"]), "actions": d["actions"], "target": d["target"]}

    losses = inner.meta_losses(split.q_fn, split.fast, part(support), part(query), split.batched_q_fn)
    weights = torch.linspace(0.5, 1.5, T, device=DEVICE)  # a non-uniform cotangent: per-task gradients checked too
    wrt = list(params.values()) + ([inner.log_lrs] if inner.log_lrs is not None else [])
    return losses.detach(), torch.autograd.grad((losses * weights).sum(), wrt)


def assert_same(losses, grads, ref_losses, ref_grads):
    torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        assert ((a - b).norm() / b.norm().clamp_min(1e-12)) <= 1e-5


@pytest.mark.parametrize("adapt", ["head", "all"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("loss", ["huber", "mse"])
@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("option", ["plain", "normalize", "multi_step"])
def test_fast_meta_objective_equals_torch_func(adapt, first_order, loss, steps, option):
    torch.manual_seed(steps)
    net = QNetwork(4, 3, (32, 16), (2.4, 3.0, 0.21, 3.0)).to(DEVICE)
    support, query = batches(steps, 3)
    kw = dict(lr=0.05, steps=steps, first_order=first_order, loss=loss, normalize=option == "normalize",
              multi_step=option == "multi_step")
    ref = losses_and_grads(net, InnerLoop(**kw, written_out=False), support, query, adapt)
    losses, grads = losses_and_grads(net, InnerLoop(**kw), support, query, adapt)
    assert_same(losses, grads, *ref)
    if steps and not first_order:  # the second-order terms are really there: first order gives other gradients
        _, fo = losses_and_grads(net, InnerLoop(**{**kw, "first_order": True}), support, query, adapt)
        assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, fo))


@pytest.mark.parametrize("adapt", ["head", "all"])
def test_learned_rates_take_the_per_task_weights_path_and_get_the_same_gradients(adapt):
    torch.manual_seed(0)
    net = QNetwork(4, 2, (16, 16)).to(DEVICE)
    n_fast = 2 if adapt == "head" else 6
    log_lrs = torch.nn.Parameter(torch.log(torch.rand(3, n_fast) * 0.1 + 0.01).to(DEVICE))
    support, query = batches(1, 2)
    ref = losses_and_grads(net, InnerLoop(0.05, 3, log_lrs=log_lrs, written_out=False), support, query, adapt)
    assert_same(*losses_and_grads(net, InnerLoop(0.05, 3, log_lrs=log_lrs), support, query, adapt), *ref)
    assert ref[1][-1].abs().sum() > 0  # the rates do get a meta-gradient


def test_written_out_path_is_what_the_default_inner_loop_runs():
    inner = InnerLoop(0.05, 3)
    assert inner.written_out
    net = QNetwork(4, 2, (8,)).to(DEVICE)
    split = split_for_adaptation(net, dict(net.named_parameters()), "head")
    support, query = batches(0, 2)
    x = {"x": split.encode(support["obs"]), "actions": support["actions"], "target": support["target"]}
    out = inner.meta_losses(split.q_fn, split.fast, x, x)
    assert out.grad_fn is not None and "LinearHeadMetaLoss" in type(out.grad_fn).__name__


@pytest.mark.parametrize("algorithm", ["anil", "maml", "metasgd"])
def test_module_meta_gradient_with_action_masks_equals_the_reference(algorithm):
    torch.manual_seed(0)
    dm = MetaDQNDataModule(family="mixed", members=MEMBERS, pool_size=6, tasks_per_batch=4, support_size=16,
                           query_size=16, learning_starts=40, adapt_budget=20, buffer_capacity=100, n_val_tasks=2,
                           n_test_tasks=2, retire_after=0)
    dm._build(rank=0)
    model = MAMLDQN(obs_dim=dm.family.obs_dim, n_actions=dm.family.n_actions, hidden=[16, 16], algorithm=algorithm)
    model.to(DEVICE)
    dm.attach_policy(model.q_values, lambda: 0.5)
    batch = dm.next_batch()
    batch = to_device(batch)
    assert not batch["action_mask"].all()  # some tasks really lack an action
    params = [p for p in model.parameters() if p.requires_grad]  # theta, and Meta-SGD's rates

    def meta_grad():
        loss, _, post = model.meta_objective(batch, with_pre=False)
        return post, torch.autograd.grad(loss, params)

    fast = meta_grad()
    model.inner = dataclasses.replace(model.inner, written_out=False)
    assert_same(*fast, *meta_grad())

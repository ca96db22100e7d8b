"""The algorithm's correctness: vmapped meta-gradients equal a plain per-task loop, first order really drops
second-order terms, the inner loop lowers the support loss, and TD targets bootstrap only on termination."""

import pytest
import torch

from mamldqn_pl.meta import InnerLoop, QNetwork, split_for_adaptation, td_loss, td_target

T, N, LR, K = 5, 24, 0.05, 3


def make_batches(seed: int = 0, n_actions: int = 2, obs_scale: float = 1.0, target_scale: float = 1.0,
                 target_offset: float = 1.0, tasks: int = T, n_support: int = N, n_query: int = N):
    g = torch.Generator().manual_seed(seed)
    def one(n):
        return {"obs": torch.randn(tasks, n, 4, generator=g) * obs_scale,
                "actions": torch.randint(n_actions, (tasks, n), generator=g),
                "target": torch.randn(tasks, n, generator=g) * target_scale + target_offset}
    return one(n_support), one(n_query)


def inner_batch(split, data):
    return {"x": split.encode(data["obs"]), "actions": data["actions"], "target": data["target"]}


def vmapped_grad(net, adapt, first_order, support, query, multi_step=False):
    params = dict(net.named_parameters())
    split = split_for_adaptation(net, params, adapt)
    inner = InnerLoop(LR, K, first_order, multi_step=multi_step)
    loss = inner.meta_losses(split.q_fn, split.fast, inner_batch(split, support), inner_batch(split, query)).mean()
    return torch.autograd.grad(loss, list(params.values()))


def loop_grad(net, adapt, first_order, support, query, multi_step=False):
    """The learn2learn/higher style: per task, torch.autograd.grad(create_graph=True) unless first order.
    With multi_step, the query loss after every inner step counts (MAML++), averaged over the steps."""
    params = dict(net.named_parameters())
    fast_names = [k for k in params if adapt == "all" or k.startswith("head.")]
    total = 0.0
    for t in range(T):
        fast = {k: params[k] for k in fast_names}

        def q(f, obs):
            return torch.func.functional_call(net, {**params, **f}, (obs,))

        for _ in range(K):
            loss = td_loss(q(fast, support["obs"][t]), support["actions"][t], support["target"][t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: w - LR * g for (k, w), g in zip(fast.items(), grads)}
            if multi_step:
                total = total + td_loss(q(fast, query["obs"][t]), query["actions"][t], query["target"][t]) / K
        if not multi_step:
            total = total + td_loss(q(fast, query["obs"][t]), query["actions"][t], query["target"][t])
    return torch.autograd.grad(total / T, list(params.values()))


@pytest.mark.parametrize("adapt", ["all", "head"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("multi_step", [False, True])
def test_vmapped_meta_gradient_equals_per_task_loop(adapt, first_order, multi_step):
    torch.manual_seed(0)
    net = QNetwork(4, 2, (32, 32), (2.4, 3.0, 0.21, 3.0))
    support, query = make_batches()
    for a, b in zip(vmapped_grad(net, adapt, first_order, support, query, multi_step),
                    loop_grad(net, adapt, first_order, support, query, multi_step), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    if multi_step:  # and it is a different objective from the last step's alone
        single = vmapped_grad(net, adapt, first_order, support, query)
        assert not all(torch.allclose(a, b) for a, b in zip(single, loop_grad(net, adapt, first_order, support,
                                                                                query, multi_step)))


@pytest.mark.parametrize("adapt", ["all", "head"])
def test_first_order_differs_from_second_order(adapt):
    torch.manual_seed(0)
    net = QNetwork(4, 2, (32, 32))
    support, query = make_batches(1)
    so = vmapped_grad(net, adapt, False, support, query)
    fo = vmapped_grad(net, adapt, True, support, query)
    assert max((a - b).abs().max().item() for a, b in zip(so, fo)) > 1e-4


def test_first_order_has_no_second_order_graph():
    """With first order, the adapted weights depend on theta only through the identity path: d theta'/d theta = I."""
    torch.manual_seed(0)
    net = QNetwork(4, 2, (16,))
    params = dict(net.named_parameters())
    split = split_for_adaptation(net, params, "all")
    support, _ = make_batches(2)
    batch = {k: v[0] for k, v in inner_batch(split, support).items()}
    adapted = InnerLoop(LR, K, first_order=True).adapt(split.q_fn, split.fast, batch)
    w = params["head.weight"]
    (jac,) = torch.autograd.grad(adapted["head.weight"].sum(), [w])
    torch.testing.assert_close(jac, torch.ones_like(w))
    adapted_so = InnerLoop(LR, K, first_order=False).adapt(split.q_fn, split.fast, batch)
    (jac_so,) = torch.autograd.grad(adapted_so["head.weight"].sum(), [w])
    assert (jac_so - 1.0).abs().max() > 1e-4


@pytest.mark.parametrize("adapt", ["all", "head"])
def test_inner_loop_lowers_the_support_loss(adapt):
    torch.manual_seed(0)
    net = QNetwork(4, 2, (32, 32))
    split = split_for_adaptation(net, dict(net.named_parameters()), adapt)
    support, _ = make_batches(3)
    batch = {k: v[0] for k, v in inner_batch(split, support).items()}
    inner = InnerLoop(0.3, 5)
    losses = [inner.loss_of(split.q_fn, split.fast, batch).item()]
    fast = split.fast
    for _ in range(inner.steps):
        fast = inner.step(split.q_fn, fast, batch)
        losses.append(inner.loss_of(split.q_fn, fast, batch).item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # every step lowers it
    assert losses[-1] < 0.8 * losses[0], losses


def test_adaptation_leaves_module_parameters_untouched():
    torch.manual_seed(0)
    net = QNetwork(4, 2, (16, 16))
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    params = dict(net.named_parameters())
    split = split_for_adaptation(net, params, "all")
    support, query = make_batches(4)
    losses = InnerLoop(0.5, 4).meta_losses(split.q_fn, split.fast, inner_batch(split, support),
                                          inner_batch(split, query))
    losses.mean().backward()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_td_target_bootstraps_on_terminated_only():
    rewards = torch.tensor([1.0, 1.0, 0.5])
    terminated = torch.tensor([0.0, 1.0, 0.0])
    next_q = torch.tensor([[2.0, 3.0], [5.0, 4.0], [-1.0, -2.0]], requires_grad=True)
    target = td_target(rewards, terminated, next_q, gamma=0.9)
    torch.testing.assert_close(target, torch.tensor([1.0 + 0.9 * 3.0, 1.0, 0.5 - 0.9]))
    assert not target.requires_grad


def test_td_loss_kinds():
    q = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    actions = torch.tensor([1, 0])
    target = torch.tensor([1.0, 0.5])
    assert td_loss(q, actions, target, "mse").item() == pytest.approx((4.0 + 0.25) / 2)
    assert td_loss(q, actions, target, "huber").item() == pytest.approx((1.5 + 0.125) / 2)
    with pytest.raises(ValueError, match="td loss"):
        td_loss(q, actions, target, "l1")


@pytest.mark.parametrize("loss", ["huber", "mse"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("learned_rates", [False, True])
def test_written_out_linear_head_steps_equal_the_torch_func_inner_loop(loss, normalize, learned_rates):
    """The fast path of collection and evaluation (ANIL, no autograd) against the vmapped torch.func reference."""
    torch.manual_seed(0)
    net = QNetwork(4, 3, (32, 32), (2.4, 3.0, 0.21, 3.0))
    params = {k: v.detach() for k, v in net.named_parameters()}
    split = split_for_adaptation(net, params, "head")
    support = inner_batch(split, make_batches(1, n_actions=3, obs_scale=2.0, target_scale=3.0, target_offset=5.0)[0])
    g = torch.Generator().manual_seed(2)
    log_lrs = torch.log(torch.rand(K, 2, generator=g) * 0.1 + 0.01) if learned_rates else None
    inner = InnerLoop(0.3, K, loss=loss, normalize=normalize, log_lrs=log_lrs)
    fast = inner.adapted_no_grad(split.q_fn, split.fast, support)
    reference = inner.adapted(split.q_fn, split.fast, support)
    assert set(fast) == {"head.weight", "head.bias"}
    for name in fast:
        torch.testing.assert_close(fast[name], reference[name], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(fast[name], split.fast[name].expand_as(fast[name]))  # the steps moved it

"""The stabilising mechanisms of issue 10, each on real CartPole tasks: the EMA of theta, the cosine meta-learning
rate, and collection with each task's adapted policy."""

import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import SMALL_DATA
from test_module import fit

from mamldqn_pl import MAMLDQN, MetaDQNDataModule, TargetNetworkSync
from mamldqn_pl.meta import split_for_adaptation


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


class EmaSnapshots(pl.Callback):
    def __init__(self) -> None:
        self.online, self.ema, self.lr = [], [], []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.online.append(flat(pl_module.net))
        self.ema.append(flat(pl_module.ema.module))
        self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_ema_moves_by_the_configured_rate_and_is_what_gets_evaluated():
    model = MAMLDQN(hidden=[16], ema_decay=0.9)
    snaps = EmaSnapshots()
    fit(model, 5, TargetNetworkSync(), snaps)
    assert torch.equal(snaps.ema[0], snaps.online[0])  # the first update copies theta
    for t in range(1, 5):
        torch.testing.assert_close(snaps.ema[t], 0.9 * snaps.ema[t - 1] + 0.1 * snaps.online[t])
        assert not torch.equal(snaps.ema[t], snaps.online[t])
    assert model.init_net is model.ema.module and all(not p.requires_grad for p in model.ema.parameters())
    assert MAMLDQN(hidden=[16]).init_net is not None and MAMLDQN(hidden=[16]).ema is None  # off by default


@pytest.mark.parametrize("horizon", [None, 16])
def test_cosine_meta_learning_rate_falls_to_its_floor_over_the_horizon(horizon):
    model = MAMLDQN(hidden=[16], meta_lr=1e-3, meta_lr_schedule="cosine", meta_lr_min=1e-4, ema_decay=0.5,
                    meta_lr_horizon=horizon)
    snaps = EmaSnapshots()
    fit(model, 8, TargetNetworkSync(), snaps)
    steps = horizon or 8  # default: trainer.max_steps
    expected = [1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * t / steps)) for t in range(8)]
    assert all(abs(a - b) < 1e-12 for a, b in zip(snaps.lr, expected, strict=True))  # step t ran at lr(t)
    assert abs(model.meta_lr_at(steps) - 1e-4) < 1e-12 and snaps.lr[0] == 1e-3


@pytest.mark.parametrize(("algorithm", "per"), [("maml", "meta_step"), ("anil", "meta_step"), ("anil", "task")])
def test_adapted_collection_acts_with_each_tasks_adapted_weights_and_never_writes_them_back(algorithm, per):
    """maml: vmapped networks; anil: a shared body and per-task heads. per "task": slots 0-3 of the 8 always
    collect with their adapted policy, 4-7 with theta, whichever of them a meta-step draws."""
    torch.manual_seed(0)
    model = MAMLDQN(hidden=[16, 16], algorithm=algorithm, inner_steps=2, inner_lr=0.5)
    dm = MetaDQNDataModule(**{**SMALL_DATA, "collect_adapted": 0.5, "collect_steps": 1, "collect_adapted_per": per})
    dm._build(rank=0)
    seen = {}

    def recording(support, mask):  # the module's own function, with what it was given kept for the check
        seen["support"], seen["mask"] = support, mask
        return model.adapted_q_values(support, mask)

    dm.attach_policy(model.q_values, lambda: 0.0, recording)  # epsilon 0: the greedy actions are stored
    dm.next_batch()  # warm start, then the first collection
    calls, run = [], dm.collector.run
    dm.collector.run = lambda slots, q, eps: (calls.append((slots.copy(), q)), run(slots, q, eps))
    for _ in range(20):  # until a draw holds both kinds of task
        calls.clear()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        dm.next_batch()
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k  # theta, theta^- untouched
        assert all(p.grad is None for p in model.parameters())
        ((slots, _),) = calls  # one collection step, all 4 tasks
        if per == "meta_step":
            own, rest = slots[:2], slots[2:]  # collect_adapted 0.5 of 4: the first 2 of the random draw
        else:
            own, rest = slots[slots < 4], slots[slots >= 4]
            assert slots.tolist() == [*own.tolist(), *rest.tolist()]  # the adapted slots act first
        if len(own) and len(rest):
            break
    assert len(own) and len(rest)
    # expected: a plain per-task inner loop (no vmap) on the same support data, then the greedy action
    params = {k: v.detach() for k, v in model.net.named_parameters()}
    split = split_for_adaptation(model.net, params, model.adapt)
    batch = model._inner_batch(split, seen["support"], seen["mask"])
    assert len(seen["support"]["obs"]) == len(own)
    for i, task in enumerate(own.tolist()):
        fast = model.inner.adapt(split.q_fn, split.fast, {k: v[i] for k, v in batch.items()})
        slot = int((dm.buffers.pos[task] - 1) % dm.buffers.capacity)
        obs = dm.buffers.obs[task, slot].unsqueeze(0)
        q_adapted = split.q_fn(fast, split.encode(obs))
        assert dm.buffers.actions[task, slot].item() == q_adapted.argmax(-1).item()
        assert not torch.allclose(q_adapted, model.net(obs))  # adaptation really changed Q
    for task in rest.tolist():
        slot = int((dm.buffers.pos[task] - 1) % dm.buffers.capacity)
        assert dm.buffers.actions[task, slot].item() == model.net(dm.buffers.obs[task, slot]).argmax().item()

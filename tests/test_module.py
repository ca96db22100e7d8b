"""The LightningModule in a real (small) Trainer on real CartPole tasks: target network, parameter ownership,
step counting, and a meta-objective whose inner loop lowers the query loss."""

import pytorch_lightning as pl
import torch
from conftest import SMALL_DATA

from mamldqn_pl import MAMLDQN, MetaDQNDataModule, TargetNetworkSync


class Snapshots(pl.Callback):
    """Records online and target parameters after every meta-step (after the target sync has run)."""

    def __init__(self) -> None:
        self.online, self.target = [], []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.online.append(torch.cat([p.detach().flatten() for p in pl_module.net.parameters()]).clone())
        self.target.append(torch.cat([p.detach().flatten() for p in pl_module.target_net.parameters()]).clone())


def fit(model: MAMLDQN, steps: int, *callbacks: pl.Callback, **data) -> pl.Trainer:
    pl.seed_everything(0)
    trainer = pl.Trainer(max_steps=steps, limit_train_batches=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                         num_sanity_val_steps=0)
    trainer.fit(model, datamodule=MetaDQNDataModule(**{**SMALL_DATA, **data}))
    return trainer


def test_target_network_gets_no_gradient_and_changes_only_at_sync():
    model = MAMLDQN(hidden=[16, 16], algorithm="maml", inner_steps=2)
    initial_target = torch.cat([p.detach().flatten() for p in model.target_net.parameters()]).clone()
    snaps = Snapshots()
    sync = TargetNetworkSync(tau=0.0, every_n_steps=3)
    trainer = fit(model, 7, sync, snaps)
    assert trainer.global_step == 7 and sync.syncs == 2
    assert all(not p.requires_grad and p.grad is None for p in model.target_net.parameters())
    for step, (online, target) in enumerate(zip(snaps.online, snaps.target), start=1):
        if step < 3:
            assert torch.equal(target, initial_target)
        elif step % 3 == 0:
            assert torch.equal(target, online)  # hard copy at the sync step
        else:
            assert torch.equal(target, snaps.online[3 * (step // 3) - 1])  # frozen since the last sync
        assert not torch.equal(online, initial_target)


def test_polyak_sync_moves_target_by_tau():
    model = MAMLDQN(hidden=[16])
    snaps = Snapshots()
    fit(model, 3, TargetNetworkSync(tau=0.25), snaps)
    expected = snaps.target[0]
    for online, target in zip(snaps.online[1:], snaps.target[1:]):
        expected = expected + 0.25 * (online - expected)
        torch.testing.assert_close(target, expected)


def test_polyak_rate_follows_its_cosine_schedule_to_tau_final():
    model = MAMLDQN(hidden=[16])
    snaps = Snapshots()
    sync = TargetNetworkSync(tau=0.5, tau_final=0.1, tau_horizon=4)
    fit(model, 6, sync, snaps)
    rates = [sync.tau_at(step, 6) for step in range(1, 7)]
    assert rates[0] < 0.5 and abs(rates[3] - 0.1) < 1e-12 and rates[3:] == [0.1, 0.1, 0.1]  # floor from step 4
    assert all(a > b for a, b in zip(rates[:3], rates[1:4]))
    expected = snaps.target[0]
    for rate, online, target in zip(rates[1:], snaps.online[1:], snaps.target[1:]):
        expected = expected + rate * (online - expected)
        torch.testing.assert_close(target, expected)


def test_global_step_counts_meta_steps_only_and_the_optimizer_steps_once_each():
    model = MAMLDQN(hidden=[16], inner_steps=5)
    trainer = fit(model, 4, TargetNetworkSync())
    assert trainer.global_step == 4
    state = trainer.optimizers[0].state_dict()["state"]
    assert all(int(s["step"]) == 4 for s in state.values())


def test_meta_objective_never_writes_adapted_weights_into_the_module():
    model = MAMLDQN(hidden=[16, 16], algorithm="maml", inner_steps=3, inner_lr=0.5)
    dm = MetaDQNDataModule(**SMALL_DATA)
    dm._build(rank=0)
    dm.attach_policy(model.q_values, lambda: 0.5)
    batch = dm.next_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meta_loss, pre, post = model.meta_objective(batch)
    meta_loss.backward()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is not None for p in model.net.parameters())
    assert post.mean() < pre.mean()  # the inner loop lowers the query loss


def test_collection_policy_follows_the_epsilon_schedule():
    model = MAMLDQN(epsilon_start=1.0, epsilon_end=0.1, epsilon_decay_steps=10)
    assert model.epsilon() == 1.0
    trainer = fit(model, 5, TargetNetworkSync())
    assert trainer.global_step == 5 and abs(model.epsilon() - 0.55) < 1e-9


def test_retire_every_replaces_tasks_only_at_its_checks_and_warm_starts_them_together(monkeypatch):
    pl.seed_everything(0)
    dm = MetaDQNDataModule(**{**SMALL_DATA, "retire_after": 50, "retire_every": 4})
    dm._build(rank=0)
    model = MAMLDQN(hidden=[8])
    dm.attach_policy(model.q_values, lambda: 0.5)
    warm_starts: list[list[int]] = []
    warm_start, retire = dm._warm_start, dm._retire
    monkeypatch.setattr(dm, "_warm_start",
                        lambda slots, *policy: (warm_starts.append(sorted(slots.tolist())), warm_start(slots, *policy)))
    checks: list[tuple[int, list[int], list[int]]] = []  # (batch, slots past retire_after, slots replaced)

    def watched_retire():
        past = torch.nonzero(dm.collector.env_steps >= 50).flatten().tolist()
        before = [t.to_dict() for t in dm.pool]
        retire()
        replaced = [i for i, t in enumerate(dm.pool) if t.to_dict() != before[i]]
        checks.append((dm.batches, past, replaced))

    monkeypatch.setattr(dm, "_retire", watched_retire)
    for _ in range(24):
        dm.next_batch()
    replacing = [(b, past, replaced) for b, past, replaced in checks if replaced]
    assert replacing and all(b % 4 == 0 for b, _, _ in replacing)  # only at the checks
    assert all(replaced == past for b, past, replaced in checks if b % 4 == 0)  # all tasks past the limit go
    assert any(past for b, past, _ in checks if b % 4)  # between checks, tasks past the limit stay
    assert len(warm_starts) == 1 + len(replacing)  # the first fill, then one batched warm start per check
    assert any(len(slots) > 1 for slots in warm_starts[1:])  # tasks retired together start together


def test_the_meta_optimiser_steps_as_torchs_single_tensor_adam_bitwise():
    """configure_optimizers' Adam is the multi-tensor (foreach) form: the parameters it reaches over 50 steps of
    the same gradients equal those of torch's default single-tensor Adam on the CPU, bitwise."""
    torch.manual_seed(0)
    model = MAMLDQN(hidden=[16, 16], adam_eps=1e-6)
    opt = model.configure_optimizers()
    assert opt.defaults["foreach"] is True
    ref_params = [p.detach().clone().requires_grad_() for p in model.net.parameters()]
    ref = torch.optim.Adam(ref_params, lr=model.hparams.meta_lr, eps=1e-6, foreach=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        for p, q in zip(model.net.parameters(), ref_params):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(model.net.parameters(), ref_params))


def test_logged_diagnostics_are_thetas_q_values_of_the_query_actions_and_the_pre_clip_gradient_norm():
    model = MAMLDQN(hidden=[16, 16], inner_steps=2)
    dm = MetaDQNDataModule(**SMALL_DATA)
    dm._build(rank=0)
    dm.attach_policy(model.q_values, lambda: 0.5)
    batch = dm.next_batch()
    d = model.diagnostics(batch)
    q = torch.stack([model.net(o)[torch.arange(len(a)), a.long()] for o, a in
                     zip(batch["query"]["obs"], batch["query"]["actions"])])
    torch.testing.assert_close(d["train/q_taken"], q.mean())
    torch.testing.assert_close(d["train/q_taken_absmax"], q.abs().max())
    flat = torch.cat([p.detach().flatten() for p in model.net.parameters()])
    torch.testing.assert_close(d["train/theta_norm"], flat.norm())
    model.meta_objective(batch)[0].backward()
    norm = model._grad_norm()
    clipped = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-4)  # returns the norm before clipping
    torch.testing.assert_close(norm, clipped)
    assert norm > 1e-4 and model._grad_norm() <= 1e-4 * 1.01

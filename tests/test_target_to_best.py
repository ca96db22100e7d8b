"""target_sync.to_best: theta^- is a hard copy of the best initialisation validated so far (validation tasks only),
fixed between new bests. Real CartPole tasks and real validation checks."""

import pytest
import torch
from conftest import TINY, mamldqn
from test_module import Snapshots, fit

from mamldqn_pl import MAMLDQN
from mamldqn_pl.callbacks import MetaTestEvaluation, TargetNetworkSync
from mamldqn_pl.errors import ConfigError


def test_theta_minus_is_the_best_validated_theta_and_moves_only_after_a_new_best():
    model = MAMLDQN(hidden=[16])
    initial = torch.cat([p.detach().flatten() for p in model.target_net.parameters()]).clone()
    sync = TargetNetworkSync(tau=0.0, to_best=True)
    validation = MetaTestEvaluation(every_n_steps=4, episodes=1, seeds=[0])
    snaps = Snapshots()
    fit(model, 24, sync, validation, snaps)  # callbacks run in this order: sync, then validation, then snapshots
    key = f"meta_val/return_k{model.hparams.inner_steps}"  # no monitor_k: the trained K is the monitored one
    returns = [h[key] for h in validation.history]
    assert [h["step"] for h in validation.history] == [4, 8, 12, 16, 20, 24]
    expected, best = initial, None
    for step in range(1, 25):
        read = [r for s, r in zip((4, 8, 12, 16, 20), returns) if s == step - 1]  # the check a step reads
        if read and (best is None or read[0] > best):
            best, expected = read[0], snaps.online[step - 2]  # theta as it was validated, one step earlier
        assert torch.equal(snaps.target[step - 1], expected), step
    assert sync.syncs >= 2 and sync.syncs < 5, returns  # the test sees a new best and a check that is not one
    assert sync.best == max(returns[:5]) and sync.syncs == sum(
        1 for i, r in enumerate(returns[:5]) if r > max(returns[:i], default=float("-inf")))
    assert all(not p.requires_grad and p.grad is None for p in model.target_net.parameters())


def test_to_best_state_round_trips():
    sync = TargetNetworkSync(tau=0.0, to_best=True)
    sync.best, sync.seen, sync.syncs = 12.5, 3, 2
    sync.checked = {"head.weight": torch.randn(2, 4)}
    other = TargetNetworkSync(tau=0.0, to_best=True)
    other.load_state_dict(sync.state_dict())
    assert (other.best, other.seen, other.syncs) == (12.5, 3, 2)
    assert torch.equal(other.checked["head.weight"], sync.checked["head.weight"])


@pytest.mark.parametrize("kwargs", [{"to_best": True}, {"tau": 0.0, "every_n_steps": 5, "to_best": True}])
def test_to_best_is_one_mode_of_three(kwargs):
    with pytest.raises(ConfigError, match="set exactly one of tau"):
        TargetNetworkSync(**kwargs)


def test_to_best_from_the_command_line_needs_tau_zero():
    out = mamldqn("fit", *TINY, "--target_sync.to_best", "true")
    assert out.returncode != 0 and "set exactly one of tau (0.005) > 0" in out.stderr
    assert "Traceback" not in out.stderr

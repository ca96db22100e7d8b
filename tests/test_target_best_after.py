"""target_sync.best_after: the usual target sync until that meta-step, then theta^- is a hard copy of the best
initialisation validated so far (validation tasks only), fixed between new bests. Real CartPole tasks and real
validation checks."""

import pytest
import torch
from conftest import TINY, refused
from test_module import Snapshots, fit

from mamldqn_pl import MAMLDQN
from mamldqn_pl.callbacks import MetaTestEvaluation, TargetNetworkSync
from mamldqn_pl.errors import ConfigError

CHECKS = (4, 8, 12, 16, 20)  # every 4 of 24 steps; the check at 24 is never read
SCRIPT = {4: 10.0, 8: 30.0, 12: 20.0, 16: 40.0, 20: 35.0, 24: 50.0}  # new bests at 4, 8, 16; not at 12, 20


class ScriptedValidation(MetaTestEvaluation):
    """meta_val's bookkeeping with fixed returns (a 24-step run's real ones do not move), so that the sync meets
    both a new best and a check that is not one; the sync reads only `history`."""

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0:
            self.history.append({"step": step, f"meta_val/return_k{pl_module.hparams.inner_steps}": SCRIPT[step]})


def run(best_after: int) -> tuple[MAMLDQN, TargetNetworkSync, list[float], Snapshots, torch.Tensor]:
    model = MAMLDQN(hidden=[16])
    initial = torch.cat([p.detach().flatten() for p in model.target_net.parameters()]).clone()
    sync = TargetNetworkSync(tau=0.0, every_n_steps=3, best_after=best_after)
    validation = ScriptedValidation(every_n_steps=4)
    snaps = Snapshots()
    fit(model, 24, sync, validation, snaps)  # callbacks run in this order: sync, then validation, then snapshots
    assert [h["step"] for h in validation.history] == [*CHECKS, 24]
    return model, sync, [SCRIPT[s] for s in (*CHECKS, 24)], snaps, initial


@pytest.mark.parametrize("best_after", [0, 10])
def test_theta_minus_follows_the_sync_then_holds_the_best_validated_theta(best_after):
    model, sync, returns, snaps, initial = run(best_after)
    expected, best, best_theta = initial, None, None
    for step in range(1, 25):
        read = [r for s, r in zip(CHECKS, returns) if s == step - 1]  # the check this step reads
        if read and (best is None or read[0] > best):
            best, best_theta = read[0], snaps.online[step - 2]  # theta as it was validated, one step earlier
            if step > best_after:
                expected = best_theta
        if step <= best_after:
            if step % 3 == 0:  # the hard copy every 3 steps, as without best_after
                expected = snaps.online[step - 1]
        elif step == best_after + 1 and best_theta is not None:
            expected = best_theta
        assert torch.equal(snaps.target[step - 1], expected), step
    new_bests = sum(1 for i, r in enumerate(returns[:5]) if r > max(returns[:i], default=float("-inf")))
    assert sync.best == 40.0 and new_bests == 3
    assert all(not p.requires_grad and p.grad is None for p in model.target_net.parameters())


def test_best_after_state_round_trips():
    sync = TargetNetworkSync(best_after=100)
    sync.best, sync.seen, sync.syncs = 12.5, 3, 2
    sync.checked = sync.best_params = {"head.weight": torch.randn(2, 4)}
    other = TargetNetworkSync(best_after=100)
    other.load_state_dict(sync.state_dict())
    assert (other.best, other.seen, other.syncs) == (12.5, 3, 2)
    assert torch.equal(other.checked["head.weight"], sync.checked["head.weight"])
    assert torch.equal(other.best_params["head.weight"], sync.best_params["head.weight"])


def test_bad_best_after_is_one_line_and_a_nonzero_exit(tmp_path, capsys):
    with pytest.raises(ConfigError, match="target_sync.best_after: -1 must be >= 0"):
        TargetNetworkSync(best_after=-1)
    # in this process: tests/test_cli.py runs one in a subprocess
    code, err = refused(["fit", *TINY, "--target_sync.best_after", "-5", "--run_dir", str(tmp_path / "bad")], capsys)
    assert code == 2 and err[-1] == "mamldqn: error: target_sync.best_after: -5 must be >= 0"

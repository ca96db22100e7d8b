"""model.weight_noise: each meta-gradient is taken at theta plus relative Gaussian noise and applied to theta, which
never keeps the noise; the draw is fixed by the run's seed and the step."""

import pytest
import pytorch_lightning as pl
import torch
from conftest import SMALL_DATA

from mamldqn_pl import MAMLDQN, MetaDQNDataModule, TargetNetworkSync
from mamldqn_pl.meta.noise import relative_noise, step_seed


def test_relative_noise_has_the_asked_scale_and_is_fixed_by_its_seed():
    big = [torch.randn(256, 256) * 0.3, torch.full((512,), 2.0)]
    noise = relative_noise(big, 0.02, seed=5)
    for p, n in zip(big, noise):
        assert abs(float(n.pow(2).mean().sqrt() / p.pow(2).mean().sqrt()) - 0.02) < 0.002
    assert all(torch.equal(a, b) for a, b in zip(noise, relative_noise(big, 0.02, seed=5)))
    assert not torch.equal(noise[0], relative_noise(big, 0.02, seed=6)[0])
    assert len({step_seed(0, s) for s in range(100)} | {step_seed(1, s) for s in range(100)}) == 200


def fit_one_step(sigma: float, monkeypatch) -> tuple[dict, dict, dict]:
    """theta before, theta as the meta-objective saw it, theta after one meta-step."""
    pl.seed_everything(3)
    model = MAMLDQN(hidden=[16], meta_lr=1e-4, weight_noise=sigma)
    before = {k: v.detach().clone() for k, v in model.net.named_parameters()}
    seen = {}
    original = MAMLDQN.meta_objective

    def spy(self, batch, **kwargs):
        seen.update({k: v.detach().clone() for k, v in self.net.named_parameters()})
        return original(self, batch, **kwargs)

    monkeypatch.setattr(MAMLDQN, "meta_objective", spy)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[TargetNetworkSync()])
    trainer.fit(model, datamodule=MetaDQNDataModule(**SMALL_DATA))
    return before, seen, {k: v.detach().clone() for k, v in model.net.named_parameters()}


@pytest.mark.parametrize("sigma", [0.0, 0.05])
def test_the_gradient_is_taken_at_theta_plus_noise_and_theta_keeps_none_of_it(sigma, monkeypatch):
    before, seen, after = fit_one_step(sigma, monkeypatch)
    expected = relative_noise(list(before.values()), sigma, step_seed(3, 0)) if sigma else None
    for i, k in enumerate(before):
        if sigma:
            torch.testing.assert_close(seen[k], before[k] + expected[i], rtol=0, atol=1e-7)
            assert not torch.equal(seen[k], before[k])
        else:
            assert torch.equal(seen[k], before[k])
        # Adam's first step moves each weight by at most meta_lr; the noise (5% of each tensor's rms) is far larger
        assert float((after[k] - before[k]).abs().max()) <= 1.01e-4

"""Random weight perturbation of theta for the meta-gradient: the adapted return is a rough function of theta (a
random move of 3% of its scale changes the validation return by tens, benchmarks/val_noise.py), so a run can
take each meta-gradient at theta plus noise of that scale and apply it to theta, which asks for an
initialisation whose adaptation survives such moves."""

from __future__ import annotations

import torch
from torch import Tensor


def relative_noise(params: list[Tensor], sigma: float, seed: int) -> list[Tensor]:
    """Gaussian noise for each tensor, sigma times the tensor's root-mean-square; the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator).to(p.device) * (sigma * p.detach().pow(2).mean().sqrt())
            for p in params]


def step_seed(run_seed: int, step: int) -> int:
    """One seed per (run, meta-step): a resumed run draws the same noise as an unbroken one, with no state."""
    return (run_seed * 1_000_003 + step) % (2**63)

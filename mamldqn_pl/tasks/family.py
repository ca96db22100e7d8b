"""What a task is, and how parameter ranges are checked and sampled: shared by every family."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mamldqn_pl.errors import ConfigError

Ranges = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Task:
    """An environment's physical parameters plus a hidden action sign; `group` labels the hidden factor."""

    params: dict[str, float]
    flip: int = 1
    index: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return "flip" if self.flip < 0 else "noflip"


def check_ranges(ranges: Mapping[str, Sequence[float]], allowed: Mapping[str, float], what: str) -> Ranges:
    """Validate {name: [low, high]} against the family's parameter names; return clean float tuples.

    `allowed` maps each parameter name to the smallest value it may take (exclusive), e.g. masses > 0.
    """
    clean: Ranges = {}
    for name, bounds in ranges.items():
        if name not in allowed:
            raise ConfigError(
                f"{what}: unknown task parameter {name!r}; allowed: {', '.join(sorted(allowed))}"
            )
        if isinstance(bounds, (int, float)):
            bounds = [bounds, bounds]
        if len(bounds) != 2:
            raise ConfigError(f"{what}.{name}: range {list(bounds)} must be [low, high]")
        low, high = float(bounds[0]), float(bounds[1])
        if not low <= high:
            raise ConfigError(f"{what}.{name}: range [{low}, {high}] is inverted; need low <= high")
        if low <= allowed[name]:
            raise ConfigError(f"{what}.{name}: range [{low}, {high}] must lie above {allowed[name]}")
        clean[name] = (low, high)
    return clean


def sample_params(ranges: Ranges, n: int, generator: torch.Generator) -> list[dict[str, float]]:
    """Draw n parameter dicts uniformly from the ranges (in sorted name order, so seeds are stable)."""
    names = sorted(ranges)
    u = torch.rand(n, len(names), generator=generator, dtype=torch.float64)
    out = []
    for row in u.tolist():
        out.append({k: ranges[k][0] + r * (ranges[k][1] - ranges[k][0]) for k, r in zip(names, row)})
    return out

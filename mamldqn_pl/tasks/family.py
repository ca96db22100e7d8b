"""What a task is, how parameter ranges are checked and sampled, and the base class of task families."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import torch

from mamldqn_pl.errors import ConfigError, require

Ranges = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Task:
    """An environment's parameters, a hidden action flip (-1 reverses the action order), the task's index in
    its set, the hidden group it belongs to (for per-group reports) and, in a mixed family, its member."""

    params: dict[str, float]
    flip: int = 1
    index: int = 0
    group: str = ""
    member: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "flip": self.flip, "index": self.index, "group": self.group,
                "member": self.member}


def check_ranges(ranges: Mapping[str, Sequence[float]], allowed: Mapping[str, float], what: str) -> Ranges:
    """Validate {name: [low, high]} against the family's parameter names; return clean float tuples.

    `allowed` maps each parameter name to the value it must lie above (exclusive), e.g. masses > 0.
    """
    clean: Ranges = {}
    for name, bounds in ranges.items():
        if name not in allowed:
            raise ConfigError(f"{what}: unknown task parameter {name!r}; allowed: {', '.join(sorted(allowed))}")
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
    return [{k: ranges[k][0] + r * (ranges[k][1] - ranges[k][0]) for k, r in zip(names, row)} for row in u.tolist()]


def sample_flips(n: int, generator: torch.Generator, balanced: bool) -> list[bool]:
    """Which of n tasks are flipped: each with probability 1/2, or with `balanced` exactly n // 2 of them."""
    if balanced:
        return (torch.randperm(n, generator=generator) < n // 2).tolist()
    return torch.rand(n, generator=generator).lt(0.5).tolist()


class ReverseActions(gym.ActionWrapper):
    """The hidden flip on a gymnasium env: action a means action n-1-a (CartPole: the force sign)."""

    def action(self, action):
        return self.action_space.n - 1 - action


class Family:
    """A task family: a gymnasium env id whose constants are drawn from ranges, plus an optional flip.

    Subclasses name the env, its default constants (`defaults`), the values each must lie above (`floors`),
    their default ranges, the observation scale and the batched env that reproduces the dynamics.
    """

    name: ClassVar[str]
    env_id: ClassVar[str]
    obs_dim: ClassVar[int]
    n_actions: ClassVar[int]
    obs_scale: ClassVar[tuple[float, ...]]
    defaults: ClassVar[dict[str, float]]
    floors: ClassVar[dict[str, float]]
    default_ranges: ClassVar[dict[str, list[float]]]
    flip_default: ClassVar[bool] = False
    batched_env: ClassVar[type]

    def __init__(self, ranges: Mapping[str, Sequence[float]] | None = None, flip: bool | None = None,
                 what: str = "data.ranges") -> None:
        self.ranges = check_ranges(self.default_ranges if ranges is None else ranges, self.floors, what)
        require(flip is None or isinstance(flip, bool), f"data.flip: {flip!r} must be true or false")
        self.flip = self.flip_default if flip is None else flip

    def sample(self, n: int, generator: torch.Generator, balanced: bool = False) -> list[Task]:
        """Draw n tasks; with `balanced` (fixed evaluation sets) exactly n // 2 are flipped when flip is on."""
        params = sample_params(self.ranges, n, generator)
        flips = sample_flips(n, generator, balanced) if self.flip else [False] * n
        return [Task(params=p, flip=-1 if f else 1, index=i, group=("flip" if f else "noflip") if self.flip else "")
                for i, (p, f) in enumerate(zip(params, flips))]

    def sample_like(self, old: Sequence[Task], generator: torch.Generator) -> list[Task]:
        """Fresh tasks to replace `old` in the training pool (retired tasks): here any len(old) tasks, the draws of
        `sample`. A mixed family keeps each one's member."""
        return self.sample(len(old), generator)

    def apply(self, core: gym.Env, task: Task) -> None:
        """Set the task's constants on the unwrapped env and recompute what the env derives from them."""
        for name, value in {**self.defaults, **task.params}.items():
            setattr(core, name, float(value))

    def make_env(self, task: Task) -> gym.Env:
        """gymnasium's own env (with its TimeLimit) carrying the task's constants: the reference dynamics."""
        env = gym.make(self.env_id)
        self.apply(env.unwrapped, task)
        return ReverseActions(env) if task.flip < 0 else env

    def batched(self, tasks: Sequence[Task], generator: torch.Generator):
        return self.batched_env(tasks, generator)

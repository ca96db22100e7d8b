"""The CartPole task family: physics drawn from ranges plus a hidden action flip.

Two ways to run a task: `make_env` gives gymnasium's own CartPole-v1 with the task's constants (the reference),
and `BatchedCartPole` steps many tasks in one NumPy call with the same arithmetic (the fast path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch

from mamldqn_pl.errors import require
from mamldqn_pl.tasks.family import Task, check_ranges, sample_params

# gymnasium's defaults; every range given overrides one of them. `length` is half the pole, as in gymnasium.
DEFAULTS: dict[str, float] = {"length": 0.5, "masspole": 0.1, "masscart": 1.0, "force_mag": 10.0, "gravity": 9.8}
FLOORS: dict[str, float] = {name: 0.0 for name in DEFAULTS}  # every constant must be > 0


def apply_params(env: gym.Env, task: Task) -> gym.Env:
    """Set a CartPoleEnv's constants and recompute what gymnasium derives once in __init__."""
    core = env.unwrapped
    for name, value in {**DEFAULTS, **task.params}.items():
        setattr(core, name, float(value))
    core.force_mag = task.flip * core.force_mag  # the hidden flip: action 1 pushes left instead of right
    core.total_mass = core.masspole + core.masscart
    core.polemass_length = core.masspole * core.length
    return env


class BatchedCartPole:
    """N CartPoles with per-slot physics, stepped together; float64 state exactly as gymnasium keeps it.

    `step` auto-resets finished slots: it returns the true next observation of the transition, while
    `obs` already holds the first observation of the next episode, so no stored transition crosses episodes.
    """

    obs_dim = 4
    n_actions = 2
    max_episode_steps = 500
    tau = 0.02
    x_threshold = 2.4
    theta_threshold = 12 * 2 * np.pi / 360

    def __init__(self, tasks: Sequence[Task], generator: torch.Generator) -> None:
        self.generator = generator
        n = len(tasks)
        self.state = np.zeros((n, 4), dtype=np.float64)
        self.elapsed = np.zeros(n, dtype=np.int64)
        self._consts = {k: np.zeros(n, dtype=np.float64) for k in DEFAULTS}
        self.set_tasks(np.arange(n), tasks)
        self.reset()

    def __len__(self) -> int:
        return len(self.state)

    def set_tasks(self, idx: np.ndarray, tasks: Sequence[Task]) -> None:
        """Give the slots `idx` new physics (task replacement); call `reset(idx)` afterwards."""
        for i, task in zip(np.asarray(idx).tolist(), tasks):
            for name, value in {**DEFAULTS, **task.params}.items():
                self._consts[name][i] = value
            self._consts["force_mag"][i] *= task.flip
        c = self._consts
        self.total_mass = c["masspole"] + c["masscart"]
        self.polemass_length = c["masspole"] * c["length"]

    def reset(self, idx: np.ndarray | None = None) -> None:
        """Start new episodes in the slots `idx` (all if None), state uniform in [-0.05, 0.05] as gymnasium."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        if len(idx) == 0:
            return
        u = torch.rand(len(idx), 4, generator=self.generator, dtype=torch.float64).numpy()
        self.state[idx] = -0.05 + 0.1 * u
        self.elapsed[idx] = 0

    @property
    def obs(self) -> np.ndarray:
        return self.state.astype(np.float32)

    def step(
        self, actions: np.ndarray, idx: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step slots `idx` (all if None); returns next_obs, reward, terminated, truncated for those slots."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        c = self._consts
        x, x_dot, theta, theta_dot = self.state[idx].T
        force = np.where(np.asarray(actions) == 1, c["force_mag"][idx], -c["force_mag"][idx])
        total_mass, pml, length = self.total_mass[idx], self.polemass_length[idx], c["length"][idx]
        costheta, sintheta = np.cos(theta), np.sin(theta)
        temp = (force + pml * np.square(theta_dot) * sintheta) / total_mass
        thetaacc = (c["gravity"][idx] * sintheta - costheta * temp) / (
            length * (4.0 / 3.0 - c["masspole"][idx] * np.square(costheta) / total_mass)
        )
        xacc = temp - pml * thetaacc * costheta / total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        new_state = np.stack([x, x_dot, theta, theta_dot], axis=1)
        self.state[idx] = new_state
        self.elapsed[idx] += 1
        terminated = (
            (x < -self.x_threshold) | (x > self.x_threshold)
            | (theta < -self.theta_threshold) | (theta > self.theta_threshold)
        )
        truncated = self.elapsed[idx] >= self.max_episode_steps
        reward = np.ones(len(idx), dtype=np.float32)
        self.reset(idx[terminated | truncated])
        return new_state.astype(np.float32), reward, terminated, truncated


class CartPoleFamily:
    """CartPole-v1 tasks: physical constants uniform in ranges, and with `flip` a hidden force sign of +-1."""

    name = "cartpole"
    obs_dim = 4
    n_actions = 2
    # Typical magnitudes of (x, x_dot, theta, theta_dot): scaling inputs to ~1 keeps TD gradients well sized.
    obs_scale = (2.4, 3.0, 0.21, 3.0)

    def __init__(self, ranges: Mapping[str, Sequence[float]], flip: bool = True, what: str = "data.ranges"):
        self.ranges = check_ranges(ranges, FLOORS, what)
        require(isinstance(flip, bool), f"data.flip: {flip!r} must be true or false")
        self.flip = flip

    def sample(self, n: int, generator: torch.Generator, balanced: bool = False) -> list[Task]:
        """Draw n tasks. The flip, when enabled, is +-1 with probability 1/2 each; with `balanced`, exactly
        n // 2 tasks are flipped (in random order), so that fixed evaluation sets have both groups evenly."""
        params = sample_params(self.ranges, n, generator)
        if not self.flip:
            signs = [False] * n
        elif balanced:
            signs = (torch.randperm(n, generator=generator) < n // 2).tolist()
        else:
            signs = torch.rand(n, generator=generator).lt(0.5).tolist()
        return [Task(params=p, flip=-1 if s else 1, index=i) for i, (p, s) in enumerate(zip(params, signs))]

    @staticmethod
    def make_env(task: Task) -> gym.Env:
        """gymnasium's CartPole-v1 (with its TimeLimit) carrying the task's constants: the reference dynamics."""
        return apply_params(gym.make("CartPole-v1"), task)

    @staticmethod
    def batched(tasks: Sequence[Task], generator: torch.Generator) -> BatchedCartPole:
        return BatchedCartPole(tasks, generator)

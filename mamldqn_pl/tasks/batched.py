"""The shared machinery of batched task environments: per-slot constants, episode clocks, autoreset.

A family's batched env subclasses `BatchedEnv` and writes only its physics: `_initial_state`, `_dynamics`
and `_observe`, with the same arithmetic as gymnasium's own env, so that each is verified step for step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mamldqn_pl.tasks.family import Task


class BatchedEnv:
    """N environments of one family, each slot with its own task constants, stepped in one NumPy call.

    `step` auto-resets finished slots: it returns the true next observation of the transition, while `obs`
    already holds the first observation of the next episode, so no stored transition crosses episodes.
    """

    obs_dim: int
    n_actions: int
    state_dim: int
    max_episode_steps: int
    defaults: dict[str, float]

    def __init__(self, tasks: Sequence[Task], generator: torch.Generator) -> None:
        self.generator = generator
        n = len(tasks)
        self.state = np.zeros((n, self.state_dim), dtype=np.float64)
        self.elapsed = np.zeros(n, dtype=np.int64)
        self.flip = np.ones(n, dtype=np.int64)
        self.consts = {k: np.zeros(n, dtype=np.float64) for k in self.defaults}
        self.action_counts = np.full(n, self.n_actions, dtype=np.int64)
        self.set_tasks(np.arange(n), tasks)
        self.reset()

    def __len__(self) -> int:
        return len(self.state)

    def set_tasks(self, idx: np.ndarray, tasks: Sequence[Task]) -> None:
        """Give the slots `idx` new constants (task replacement); call `reset(idx)` afterwards."""
        for i, task in zip(np.asarray(idx).tolist(), tasks):
            for name, value in {**self.defaults, **task.params}.items():
                self.consts[name][i] = value
            self.flip[i] = task.flip
        self._derive()

    def _derive(self) -> None:
        """Recompute constants that depend on others (gymnasium computes some once in __init__)."""

    def reset(self, idx: np.ndarray | None = None) -> None:
        """Start new episodes in the slots `idx` (all if None)."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        if len(idx):
            self.state[idx] = self._initial_state(len(idx))
            self.elapsed[idx] = 0

    def uniform(self, n: int, k: int, low: float, high: float) -> np.ndarray:
        """Uniform reset noise from the env's own torch Generator (checkpointable as a tensor)."""
        u = torch.rand(n, k, generator=self.generator, dtype=torch.float64).numpy()
        return low + (high - low) * u

    @property
    def obs(self) -> np.ndarray:
        return self._observe(self.state)

    def step(
        self, actions: np.ndarray, idx: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step slots `idx` (all if None); returns next_obs, reward, terminated, truncated for those slots."""
        sel = slice(None) if idx is None else np.asarray(idx)  # all slots: views, no gathers
        actions = np.asarray(actions)
        actions = np.where(self.flip[sel] < 0, self.n_actions - 1 - actions, actions)  # the hidden flip
        new_state, reward, terminated = self._dynamics(self.state[sel], actions, sel)
        self.state[sel] = new_state
        self.elapsed[sel] += 1
        truncated = self.elapsed[sel] >= self.max_episode_steps
        next_obs = self._observe(new_state)
        done = terminated | truncated
        if done.any():
            self.reset(np.flatnonzero(done) if idx is None else sel[done])
        return next_obs, reward.astype(np.float32), terminated, truncated

    def get_state(self) -> dict[str, torch.Tensor]:
        return {"state": torch.from_numpy(self.state.copy()), "elapsed": torch.from_numpy(self.elapsed.copy())}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.state[:] = state["state"].numpy()
        self.elapsed[:] = state["elapsed"].numpy()

    # ---- what a family writes -----------------------------------------------------------------------------
    def _initial_state(self, n: int) -> np.ndarray:
        raise NotImplementedError

    def _dynamics(self, state: np.ndarray, actions: np.ndarray, idx: np.ndarray | slice):
        """Returns (new_state, reward, terminated) for the slots idx (an index array, or a slice for all),
        given their state and actions."""
        raise NotImplementedError

    def _observe(self, state: np.ndarray) -> np.ndarray:
        return state.astype(np.float32)

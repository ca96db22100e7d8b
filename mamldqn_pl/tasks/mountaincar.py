"""MountainCar-v0 tasks: engine force, gravity and goal position drawn from ranges."""

from __future__ import annotations

import numpy as np

from mamldqn_pl.tasks.batched import BatchedEnv
from mamldqn_pl.tasks.family import Family

DEFAULTS = {"force": 0.001, "gravity": 0.0025, "goal_position": 0.5}


class BatchedMountainCar(BatchedEnv):
    """gymnasium's MountainCarEnv.step, vectorised over slots with per-slot constants."""

    obs_dim, n_actions, state_dim, max_episode_steps = 2, 3, 2, 200
    defaults = DEFAULTS
    min_position, max_position, max_speed, goal_velocity = -1.2, 0.6, 0.07, 0.0

    def _initial_state(self, n: int) -> np.ndarray:
        return np.concatenate([self.uniform(n, 1, -0.6, -0.4), np.zeros((n, 1))], axis=1)

    def _dynamics(self, state: np.ndarray, actions: np.ndarray, idx: np.ndarray):
        c = self.consts
        position, velocity = state[:, 0], state[:, 1]
        # gymnasium: velocity += (action - 1) * force + cos(3 * position) * (-gravity), summed in this order
        velocity = velocity + ((actions - 1) * c["force"][idx] + np.cos(3 * position) * (-c["gravity"][idx]))
        velocity = np.clip(velocity, -self.max_speed, self.max_speed)
        position = np.clip(position + velocity, self.min_position, self.max_position)
        velocity = np.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= c["goal_position"][idx]) & (velocity >= self.goal_velocity)
        return np.stack([position, velocity], axis=1), -np.ones(len(state)), terminated


class MountainCarFamily(Family):
    """The seed article's second task. Reward is -1 per step until the goal: hard for DQN in 200 steps."""

    name, env_id = "mountaincar", "MountainCar-v0"
    obs_dim, n_actions = 2, 3
    obs_scale = (1.2, 0.07)
    defaults = DEFAULTS
    floors = {"force": 0.0, "gravity": 0.0, "goal_position": -1.2}
    default_ranges = {"force": [0.0008, 0.0015], "gravity": [0.002, 0.003]}
    batched_env = BatchedMountainCar

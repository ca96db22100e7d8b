"""CartPole-v1 tasks: pole length, pole mass, cart mass and force drawn from ranges, plus the hidden flip."""

from __future__ import annotations

import numpy as np

from mamldqn_pl.tasks.batched import BatchedEnv
from mamldqn_pl.tasks.family import Family, Task

# gymnasium's defaults; every range given overrides one of them. `length` is half the pole, as in gymnasium.
DEFAULTS = {"length": 0.5, "masspole": 0.1, "masscart": 1.0, "force_mag": 10.0, "gravity": 9.8}


class BatchedCartPole(BatchedEnv):
    """gymnasium's CartPoleEnv.step, vectorised over slots with per-slot constants (float64 state)."""

    obs_dim, n_actions, state_dim, max_episode_steps = 4, 2, 4, 500
    defaults = DEFAULTS
    tau, x_threshold, theta_threshold = 0.02, 2.4, 12 * 2 * np.pi / 360

    def _derive(self) -> None:
        c = self.consts
        self.total_mass = c["masspole"] + c["masscart"]
        self.polemass_length = c["masspole"] * c["length"]

    def _initial_state(self, n: int) -> np.ndarray:
        return self.uniform(n, 4, -0.05, 0.05)

    def _dynamics(self, state: np.ndarray, actions: np.ndarray, idx: np.ndarray):
        c = self.consts
        x, x_dot, theta, theta_dot = state.T
        force = np.where(actions == 1, c["force_mag"][idx], -c["force_mag"][idx])
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
        terminated = (x < -self.x_threshold) | (x > self.x_threshold) | (theta < -self.theta_threshold) | (
            theta > self.theta_threshold)
        return np.stack([x, x_dot, theta, theta_dot], axis=1), np.ones(len(state)), terminated


class CartPoleFamily(Family):
    """The default family. Physics ranges alone need no adaptation (one policy balances them all); the hidden
    flip, on by default, is what makes it a few-shot problem."""

    name, env_id = "cartpole", "CartPole-v1"
    obs_dim, n_actions = 4, 2
    obs_scale = (2.4, 3.0, 0.21, 3.0)  # typical magnitudes of (x, x_dot, theta, theta_dot)
    defaults = DEFAULTS
    floors = {name: 0.0 for name in DEFAULTS}
    default_ranges = {"length": [0.25, 1.0], "masspole": [0.05, 0.5], "masscart": [0.5, 2.0], "force_mag": [5.0, 15.0]}
    flip_default = True
    batched_env = BatchedCartPole

    def apply(self, core, task: Task) -> None:
        super().apply(core, task)
        core.total_mass = core.masspole + core.masscart  # gymnasium derives these once, in __init__
        core.polemass_length = core.masspole * core.length

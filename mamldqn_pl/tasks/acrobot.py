"""Acrobot-v1 tasks: link lengths and masses drawn from ranges (centres of mass kept at mid-link)."""

from __future__ import annotations

import numpy as np

from mamldqn_pl.tasks.batched import BatchedEnv
from mamldqn_pl.tasks.family import Family, Task

DEFAULTS = {"link_length_1": 1.0, "link_length_2": 1.0, "link_mass_1": 1.0, "link_mass_2": 1.0}


def _wrap(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """gymnasium's acrobot.wrap (repeated +-(high - low)), elementwise."""
    diff = high - low
    while (x > high).any():
        x = np.where(x > high, x - diff, x)
    while (x < low).any():
        x = np.where(x < low, x + diff, x)
    return x


class BatchedAcrobot(BatchedEnv):
    """gymnasium's AcrobotEnv.step ("book" dynamics, RK4 over dt = 0.2), vectorised over slots."""

    obs_dim, n_actions, state_dim, max_episode_steps = 6, 3, 4, 500
    defaults = DEFAULTS
    dt, moi, g = 0.2, 1.0, 9.8
    max_vel_1, max_vel_2 = 4 * np.pi, 9 * np.pi
    torques = np.array([-1.0, 0.0, 1.0])

    def _initial_state(self, n: int) -> np.ndarray:
        return self.uniform(n, 4, -0.1, 0.1).astype(np.float32).astype(np.float64)  # gymnasium keeps float32

    def _derive(self) -> None:
        """Per-slot products that gymnasium's _dsdt computes every call, grouped exactly as its expressions
        associate (left to right), so that the results stay bitwise equal."""
        c = self.consts
        m1, m2, l1 = c["link_mass_1"], c["link_mass_2"], c["link_length_1"]
        lc1, lc2 = c["link_length_1"] / 2, c["link_length_2"] / 2
        self.derived = {
            "m2": m2,
            "d1_a": m1 * lc1**2,                      # m1 * lc1**2
            "d1_b": l1**2 + lc2**2,                   # l1**2 + lc2**2
            "d1_c": 2 * l1 * lc2,                     # 2 * l1 * lc2
            "d2_a": lc2**2,
            "d2_b": l1 * lc2,
            "phi2": m2 * lc2 * self.g,                # m2 * lc2 * g
            "phi1_a": -m2 * l1 * lc2,                 # -m2 * l1 * lc2
            "phi1_b": 2 * m2 * l1 * lc2,              # 2 * m2 * l1 * lc2
            "phi1_c": (m1 * lc1 + m2 * l1) * self.g,  # (m1 * lc1 + m2 * l1) * g
            "dd_a": m2 * l1 * lc2,                    # m2 * l1 * lc2
            "dd_b": m2 * lc2**2 + self.moi,           # m2 * lc2**2 + I2
        }

    def _dsdt(self, y: np.ndarray, k: dict[str, np.ndarray]) -> np.ndarray:
        """gymnasium's AcrobotEnv._dsdt ("book"), on rows of [theta1, theta2, dtheta1, dtheta2, torque]."""
        i1 = i2 = self.moi
        pi = np.pi
        a, theta1, theta2, dtheta1, dtheta2 = y[:, 4], y[:, 0], y[:, 1], y[:, 2], y[:, 3]
        cos2, sin2 = np.cos(theta2), np.sin(theta2)
        d1 = k["d1_a"] + k["m2"] * (k["d1_b"] + k["d1_c"] * cos2) + i1 + i2
        d2 = k["m2"] * (k["d2_a"] + k["d2_b"] * cos2) + i2
        phi2 = k["phi2"] * np.cos(theta1 + theta2 - pi / 2.0)
        phi1 = (k["phi1_a"] * dtheta2**2 * sin2 - k["phi1_b"] * dtheta2 * dtheta1 * sin2
                + k["phi1_c"] * np.cos(theta1 - pi / 2) + phi2)
        ddtheta2 = (a + d2 / d1 * phi1 - k["dd_a"] * dtheta1**2 * sin2 - phi2) / (k["dd_b"] - d2**2 / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return np.stack([dtheta1, dtheta2, ddtheta1, ddtheta2, np.zeros_like(a)], axis=1)

    def _dynamics(self, state: np.ndarray, actions: np.ndarray, idx):
        k = {name: v[idx] for name, v in self.derived.items()}
        y0 = np.concatenate([state, self.torques[actions][:, None]], axis=1)
        dt = self.dt
        dt2 = dt / 2.0
        k1 = self._dsdt(y0, k)
        k2 = self._dsdt(y0 + dt2 * k1, k)
        k3 = self._dsdt(y0 + dt2 * k2, k)
        k4 = self._dsdt(y0 + dt * k3, k)
        ns = (y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))[:, :4]
        ns[:, 0] = _wrap(ns[:, 0], -np.pi, np.pi)
        ns[:, 1] = _wrap(ns[:, 1], -np.pi, np.pi)
        ns[:, 2] = np.minimum(np.maximum(ns[:, 2], -self.max_vel_1), self.max_vel_1)
        ns[:, 3] = np.minimum(np.maximum(ns[:, 3], -self.max_vel_2), self.max_vel_2)
        terminated = -np.cos(ns[:, 0]) - np.cos(ns[:, 1] + ns[:, 0]) > 1.0
        return ns, np.where(terminated, 0.0, -1.0), terminated

    def _observe(self, state: np.ndarray) -> np.ndarray:
        s0, s1 = state[:, 0], state[:, 1]
        return np.stack([np.cos(s0), np.sin(s0), np.cos(s1), np.sin(s1), state[:, 2], state[:, 3]],
                        axis=1).astype(np.float32)


class AcrobotFamily(Family):
    """Acrobot-v1 with link lengths and masses from ranges. gymnasium keeps each centre of mass at half its
    link's default length (0.5); here it follows the drawn length (length / 2), as the physics requires."""

    name, env_id = "acrobot", "Acrobot-v1"
    obs_dim, n_actions = 6, 3
    obs_scale = (1.0, 1.0, 1.0, 1.0, 4 * np.pi, 9 * np.pi)
    defaults = DEFAULTS
    floors = {name: 0.0 for name in DEFAULTS}
    default_ranges = {"link_length_1": [0.7, 1.3], "link_mass_1": [0.7, 1.3], "link_mass_2": [0.7, 1.3]}
    batched_env = BatchedAcrobot

    def apply(self, core, task: Task) -> None:
        values = {**self.defaults, **task.params}
        for name, value in values.items():
            setattr(core, name.upper(), float(value))
        core.LINK_COM_POS_1 = values["link_length_1"] / 2
        core.LINK_COM_POS_2 = values["link_length_2"] / 2

"""Nav2D: the MAML paper's 2D navigation task in DQN form, as a gymnasium env and a task family.

A point robot starts at the origin and moves a fixed step in one of 4 (or 8) directions, or stays; the goal
is hidden and drawn per task; the reward is minus the distance to the goal; episodes last a fixed 50 steps.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mamldqn_pl.errors import require
from mamldqn_pl.tasks.batched import BatchedEnv
from mamldqn_pl.tasks.family import Family, ReverseActions

ENV_ID = "mamldqn_pl/Nav2D-v0"
EPISODE_STEPS = 50
BOUND = 2.0


def moves(directions: int) -> np.ndarray:
    """Unit moves: stay, then 4 axis directions, then (with 8) the 4 diagonals scaled to unit length."""
    axis = [[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]
    diag = (np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) / np.sqrt(2.0)).tolist()
    return np.array(axis + (diag if directions == 8 else []))


class Nav2DEnv(gym.Env):
    """The gymnasium env (the reference dynamics of the nav2d family)."""

    metadata = {"render_modes": []}

    def __init__(self, goal_x: float = 0.0, goal_y: float = 0.0, directions: int = 4, step_size: float = 0.1):
        require(directions in (4, 8), f"nav2d directions: {directions} must be 4 or 8")
        self.goal_x, self.goal_y, self.step_size = goal_x, goal_y, step_size
        self.moves = moves(directions)
        self.observation_space = spaces.Box(-BOUND, BOUND, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(len(self.moves))
        self.pos = np.zeros(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = np.zeros(2)
        return self.pos.astype(np.float32), {}

    def step(self, action):
        self.pos = np.clip(self.pos + self.step_size * self.moves[int(action)], -BOUND, BOUND)
        dist = np.sqrt(np.square(self.pos[0] - self.goal_x) + np.square(self.pos[1] - self.goal_y))
        return self.pos.astype(np.float32), float(-dist), False, False, {}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=Nav2DEnv, max_episode_steps=EPISODE_STEPS)


class BatchedNav2D(BatchedEnv):
    obs_dim, state_dim, max_episode_steps = 2, 2, EPISODE_STEPS
    defaults = {"goal_x": 0.0, "goal_y": 0.0, "step_size": 0.1}
    n_actions = 5
    move_table = moves(4)

    def _initial_state(self, n: int) -> np.ndarray:
        return np.zeros((n, 2))

    def _dynamics(self, state: np.ndarray, actions: np.ndarray, idx: np.ndarray):
        c = self.consts
        pos = np.clip(state + c["step_size"][idx, None] * self.move_table[actions], -BOUND, BOUND)
        dist = np.sqrt(np.square(pos[:, 0] - c["goal_x"][idx]) + np.square(pos[:, 1] - c["goal_y"][idx]))
        return pos, -dist, np.zeros(len(state), dtype=bool)


class BatchedNav2D8(BatchedNav2D):
    n_actions = 9
    move_table = moves(8)


class Nav2DFamily(Family):
    """Goals uniform in [-0.5, 0.5]^2 by default, as in the MAML paper's 2D navigation."""

    name, env_id = "nav2d", ENV_ID
    obs_dim, n_actions = 2, 5
    obs_scale = (1.0, 1.0)
    defaults = BatchedNav2D.defaults
    floors = {"goal_x": -BOUND, "goal_y": -BOUND, "step_size": 0.0}
    default_ranges = {"goal_x": [-0.5, 0.5], "goal_y": [-0.5, 0.5]}
    batched_env = BatchedNav2D

    def __init__(self, ranges=None, flip=None, what="data.ranges", directions: int = 4) -> None:
        super().__init__(ranges, flip, what)
        require(directions in (4, 8), f"data.env_kwargs.directions: {directions} must be 4 or 8")
        self.directions = directions
        self.n_actions = directions + 1
        self.batched_env = BatchedNav2D if directions == 4 else BatchedNav2D8

    def make_env(self, task):
        env = gym.make(self.env_id, directions=self.directions)
        self.apply(env.unwrapped, task)
        return env if task.flip > 0 else ReverseActions(env)

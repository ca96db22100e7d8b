"""Any gymnasium env id with a discrete action space and plain float attributes, as a family from YAML alone.

Its envs are stepped one by one (gymnasium's own code); the batched NumPy envs exist for the built-in families.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch

from mamldqn_pl.errors import ConfigError
from mamldqn_pl.tasks.family import Family, ReverseActions, Task


class GymVectorEnv:
    """The BatchedEnv interface over a list of gymnasium envs, one per slot, with autoreset.

    Environment state is not checkpointed (a gymnasium env's internals are not plain data): a resumed run
    starts fresh episodes in every slot, seeded from the data module's RNG, and keeps the replay buffers.
    """

    def __init__(self, family, tasks: Sequence[Task], generator: torch.Generator,
                 envs: Sequence[gym.Env] | None = None) -> None:
        """One env per task from `family.make_env`, or the given `envs` (a user's own instances)."""
        self.family, self.generator = family, generator
        self.obs_dim, self.n_actions = family.obs_dim, family.n_actions
        self.max_episode_steps = family.max_episode_steps
        self.envs: list[gym.Env] = list(envs) if envs is not None else [family.make_env(t) for t in tasks]
        self.action_counts = np.full(len(self.envs), self.n_actions, dtype=np.int64)
        self._obs = np.zeros((len(self.envs), self.obs_dim), dtype=np.float32)
        self.reset()

    def __len__(self) -> int:
        return len(self.envs)

    def set_tasks(self, idx: np.ndarray, tasks: Sequence[Task]) -> None:
        for i, task in zip(np.asarray(idx).tolist(), tasks):
            self.envs[i] = self.family.make_env(task)

    def reset(self, idx: np.ndarray | None = None) -> None:
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        for i in idx.tolist():
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
            self._obs[i] = self.envs[i].reset(seed=seed)[0]

    @property
    def obs(self) -> np.ndarray:
        return self._obs.copy()

    def step(self, actions: np.ndarray, idx: np.ndarray | None = None):
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        out = np.zeros((len(idx), self.obs_dim), dtype=np.float32)
        reward = np.zeros(len(idx), dtype=np.float32)
        terminated = np.zeros(len(idx), dtype=bool)
        truncated = np.zeros(len(idx), dtype=bool)
        for j, (i, a) in enumerate(zip(idx.tolist(), np.asarray(actions).tolist())):
            out[j], reward[j], terminated[j], truncated[j], _ = self.envs[i].step(int(a))
            self._obs[i] = out[j]
            if terminated[j] or truncated[j]:
                self.reset(np.array([i]))
        return out, reward, terminated, truncated

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        self.reset()


class GymFamily(Family):
    """`data.family: gym` with `data.env_id` and `data.ranges` over the unwrapped env's float attributes."""

    name = "gym"
    flip_default = False

    def __init__(self, env_id: str, ranges=None, flip=None, what: str = "data.ranges") -> None:
        try:
            env = gym.make(env_id)
        except gym.error.Error as err:
            raise ConfigError(f"data.env_id: {env_id!r} is not a gymnasium env id ({type(err).__name__})") from None
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ConfigError(f"data.env_id: {env_id!r} has action space {env.action_space}; DQN needs Discrete")
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ConfigError(f"data.env_id: {env_id!r} has observation space {space}; need a 1-D Box")
        core = env.unwrapped
        ranges = ranges or {}
        for name in ranges:
            value = getattr(core, name, None)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"data.ranges: {env_id} has no plain float attribute {name!r}")
        self.env_id = env_id
        self.defaults = {name: float(getattr(core, name)) for name in ranges}
        self.floors = {name: -np.inf for name in ranges}
        self.default_ranges = {}
        self.obs_dim, self.n_actions = int(space.shape[0]), int(env.action_space.n)
        self.obs_scale = tuple(1.0 for _ in range(self.obs_dim))
        self.max_episode_steps = env.spec.max_episode_steps or 1000
        env.close()
        super().__init__(ranges, flip, what)

    def make_env(self, task: Task) -> gym.Env:
        env = gym.make(self.env_id)
        self.apply(env.unwrapped, task)
        return ReverseActions(env) if task.flip < 0 else env

    def batched(self, tasks: Sequence[Task], generator: torch.Generator) -> GymVectorEnv:
        return GymVectorEnv(self, tasks, generator)

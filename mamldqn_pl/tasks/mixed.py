"""Mixed families: one meta-batch whose tasks come from different environments (the seed's CartPole +
MountainCar example). Observations are scaled per member and zero-padded to the largest dimension; each
slot carries its action count, and actions beyond it are masked out of every max, argmax and random choice.
With `member_feature`, a one-hot of the member follows the padded observation: which game a task is (its
observation and action spaces, which every agent sees) is then an input, not something the network must infer
from a zero-padded state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from mamldqn_pl.errors import ConfigError, require
from mamldqn_pl.tasks.family import Family, Task


@dataclass(frozen=True)
class MemberView:
    """How one member's own observations enter the mixed family's network: scaled by the member's typical
    magnitudes, zero-padded to the family's state, the member's one-hot after it (`member_feature`); and which of
    the network's actions are the member's (the first `n_actions`). MixedEnv pads with it in training; a user's
    plain env of that member (`MemberObservation`) and an adapted agent (`MemberQNetwork`) apply the same map, so
    a mixed checkpoint plays gymnasium's own CartPole-v1 or MountainCar-v0."""

    member: int
    name: str
    raw_dim: int
    state_dim: int
    obs_dim: int
    n_actions: int
    scale: tuple[float, ...]
    one_hot: bool

    @cached_property
    def _scale(self) -> np.ndarray:
        return np.asarray(self.scale, dtype=np.float32)  # once: obs() runs at every env step of MixedEnv

    def obs(self, raw: np.ndarray) -> np.ndarray:
        """Padded observations [n, obs_dim] of the member's own [n, raw_dim]."""
        out = np.zeros((len(raw), self.obs_dim), dtype=np.float32)
        out[:, : self.raw_dim] = raw / self._scale
        if self.one_hot:
            out[:, self.state_dim + self.member] = 1.0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemberView:
        return cls(**{**d, "scale": tuple(d["scale"])})


class MemberObservation(gym.ObservationWrapper):
    """A plain env of one member (e.g. gymnasium's MountainCar-v0) as the mixed family's network sees it: its
    observation padded by the member's view; its own Discrete actions (the network's first n_actions)."""

    def __init__(self, env: gym.Env, view: MemberView) -> None:
        super().__init__(env)
        self.view = view
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (view.obs_dim,), np.float32)

    def observation(self, observation):
        return self.view.obs(np.asarray(observation, dtype=np.float32)[None])[0]


class MixedEnv:
    """The BatchedEnv interface over one batched env per member; every member env has all N slots and a slot
    is stepped by the member that owns its current task."""

    def __init__(self, family: MixedFamily, tasks: Sequence[Task], generator: torch.Generator) -> None:
        self.family, self.generator = family, generator
        self.obs_dim, self.n_actions = family.obs_dim, family.n_actions
        n = len(tasks)
        self.envs = [m.batched([Task(params={})] * n, generator) for m in family.members]
        self.views = [family.view(j) for j in range(len(family.members))]
        self.max_episode_steps = max(e.max_episode_steps for e in self.envs)
        self.owner = np.zeros(n, dtype=np.int64)
        self.set_tasks(np.arange(n), tasks)
        self.reset()

    def __len__(self) -> int:
        return len(self.owner)

    @property
    def action_counts(self) -> np.ndarray:
        return np.array([self.family.members[j].n_actions for j in self.owner], dtype=np.int64)

    def set_tasks(self, idx: np.ndarray, tasks: Sequence[Task]) -> None:
        for i, task in zip(np.asarray(idx).tolist(), tasks):
            self.owner[i] = task.member
            self.envs[task.member].set_tasks(np.array([i]), [task])

    def reset(self, idx: np.ndarray | None = None) -> None:
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        for j, env in enumerate(self.envs):
            env.reset(idx[self.owner[idx] == j])

    @property
    def obs(self) -> np.ndarray:
        out = np.zeros((len(self), self.obs_dim), dtype=np.float32)
        for j, env in enumerate(self.envs):
            rows = np.flatnonzero(self.owner == j)
            out[rows] = self.views[j].obs(env.obs[rows])
        return out

    def step(self, actions: np.ndarray, idx: np.ndarray | None = None):
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        actions = np.asarray(actions)
        next_obs = np.zeros((len(idx), self.obs_dim), dtype=np.float32)
        reward = np.zeros(len(idx), dtype=np.float32)
        terminated = np.zeros(len(idx), dtype=bool)
        truncated = np.zeros(len(idx), dtype=bool)
        for j, env in enumerate(self.envs):
            sel = self.owner[idx] == j
            if sel.any():
                o, reward[sel], terminated[sel], truncated[sel] = env.step(actions[sel], idx[sel])
                next_obs[sel] = self.views[j].obs(o)
        return next_obs, reward, terminated, truncated

    def get_state(self) -> dict:
        return {"owner": torch.from_numpy(self.owner.copy()),
                "members": [env.get_state() for env in self.envs]}

    def set_state(self, state: dict) -> None:
        self.owner[:] = state["owner"].numpy()
        for env, s in zip(self.envs, state["members"]):
            env.set_state(s)


class MixedFamily(Family):
    """Members are families; task i belongs to member i mod k (every member equally often), except in a training
    pool drawn with `pool_shares`: member j then owns round(n * share_j) of its n slots."""

    name = "mixed"

    def __init__(self, members: Sequence[Family], pool_shares: Sequence[float | None] | None = None,
                 member_feature: bool = False) -> None:
        """`pool_shares`: each member's `data.members[j].pool_share`, None where not given (all or none)."""
        require(len(members) >= 2, "data.members: a mixed family needs at least two member families")
        shares = list(pool_shares or [None] * len(members))
        require(len(shares) == len(members), f"pool_shares: {shares}: one per member ({len(members)})")
        for j, share in enumerate(shares):
            require(share is None or (not isinstance(share, bool) and isinstance(share, (int, float)) and share > 0),
                    f"data.members[{j}].pool_share: {share!r}; allowed: a number > 0 (the member's weight in the "
                    "training pool)")
        given = [j for j, share in enumerate(shares) if share is not None]
        require(len(given) in (0, len(shares)), f"data.members: pool_share given for members {given} only; give it "
                "to every member or to none")
        self.members = list(members)
        self.pool_shares = [s / sum(shares) for s in shares] if given else None
        self.member_feature = member_feature
        self.state_dim = max(m.obs_dim for m in members)  # the padded state; the member's one-hot follows it
        self.obs_dim = self.state_dim + (len(members) if member_feature else 0)
        self.n_actions = max(m.n_actions for m in members)
        self.obs_scale = tuple(1.0 for _ in range(self.obs_dim))  # each member's scale is applied in MixedEnv
        self.flip = any(m.flip for m in members)

    def sample(self, n: int, generator: torch.Generator, balanced: bool = False) -> list[Task]:
        """n tasks; the validation and test sets (`balanced`) always deal members in turn, the training pool by
        `pool_shares` where given (a harder member can get more of the meta-training while the held-out tasks
        still weigh every member alike)."""
        k = len(self.members)
        owner = np.arange(n) % k if balanced or self.pool_shares is None else self._owners(n)
        per_member = [iter(m.sample(int((owner == j).sum()), generator, balanced))
                      for j, m in enumerate(self.members)]
        return [self._own(next(per_member[j]), i, j) for i, j in enumerate(owner.tolist())]

    def _owners(self, n: int) -> np.ndarray:
        """Member of each of n slots: counts by largest remainder of n * share, members interleaved evenly."""
        exact = n * np.asarray(self.pool_shares)
        counts = np.floor(exact).astype(np.int64)
        counts[np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]] += 1
        require(counts.min() >= 1, f"data.members: pool_share {[round(x, 4) for x in self.pool_shares]} leaves "
                f"member {int(counts.argmin())} no slot of the {n} in the pool (data.pool_size); give it a larger "
                "share")
        position = np.concatenate([(np.arange(c) + 0.5) / c for c in counts])
        member = np.repeat(np.arange(len(counts)), counts)
        return member[np.argsort(position, kind="stable")]

    def sample_like(self, old: Sequence[Task], generator: torch.Generator) -> list[Task]:
        """Fresh tasks to replace `old`, each from the member of the task it replaces, so the training pool keeps
        its members' shares. (`sample(n)` deals members in turn from the first: replacing the one or two tasks
        that retire at a time with it filled the pool with the first member, MountainCar's share of the seed's
        example falling from 1/2 to 1/9 in 2,000 meta-steps and to 1/64 by 12,000; twenty-first session.)"""
        fresh: list[Task | None] = [None] * len(old)
        for j, member in enumerate(self.members):
            at = [i for i, t in enumerate(old) if t.member == j]
            for i, t in zip(at, member.sample(len(at), generator)):
                fresh[i] = self._own(t, i, j)
        return fresh

    def _own(self, t: Task, i: int, j: int) -> Task:
        """Member j's task t as task i of this family (its group names the member)."""
        return replace(t, index=i, member=j, group=self.members[j].name + (f"-{t.group}" if t.group else ""))

    def view(self, j: int) -> MemberView:
        """Member j's observations and actions in this family's network."""
        m = self.members[j]
        return MemberView(j, m.name, m.obs_dim, self.state_dim, self.obs_dim, m.n_actions,
                          tuple(float(x) for x in m.obs_scale), self.member_feature)

    def member_index(self, member: int | str | None, env_id: str | None = None) -> int:
        """The member a user's task belongs to: its index, or its family's name (e.g. "mountaincar") where that
        is unique; without one, the member whose env id is `env_id`. Anything else: one line naming the members."""
        names = [m.name for m in self.members]
        allowed = ", ".join(f"{j} ({name})" for j, name in enumerate(names))
        if member is None:
            owners = [j for j, m in enumerate(self.members) if env_id is not None and m.env_id == env_id]
            if len(owners) == 1:
                return owners[0]
            why = f" ({env_id} is not the env of exactly one member)" if env_id else ""
            raise ConfigError(f"--member: a mixed-family checkpoint needs the member the task belongs to{why}; "
                              f"allowed: {allowed}")
        if isinstance(member, str) and not member.isdigit():
            if names.count(member) == 1:
                return names.index(member)
            raise ConfigError(f"--member: {member!r} names {'no' if member not in names else 'more than one'} "
                              f"member; allowed: {allowed}")
        j = int(member)
        if isinstance(member, bool) or not 0 <= j < len(names):
            raise ConfigError(f"--member: {member!r}; allowed: {allowed}")
        return j

    def make_env(self, task: Task):
        return self.members[task.member].make_env(task)

    def batched(self, tasks: Sequence[Task], generator: torch.Generator) -> MixedEnv:
        return MixedEnv(self, tasks, generator)

"""One ring buffer per task, kept as stacked tensors [tasks, capacity, ...] so that many tasks sample in one op."""

from __future__ import annotations

import torch
from torch import Tensor

FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated")


class ReplayBuffers:
    """Per-task ring buffers of (s, a, r, s', terminated); tensors only, so checkpoints load with weights_only.

    With `keep_first` > 0 the ring wraps to slot keep_first instead of 0: each task's first transitions (its
    warm start, collected exactly like meta-test support) are never overwritten.
    """

    def __init__(self, n_tasks: int, capacity: int, obs_dim: int, keep_first: int = 0) -> None:
        if not 0 <= keep_first < capacity:
            raise ValueError(f"keep_first {keep_first} must lie in [0, capacity {capacity})")
        self.capacity = capacity
        self.keep_first = keep_first
        self.obs = torch.zeros(n_tasks, capacity, obs_dim)
        self.next_obs = torch.zeros(n_tasks, capacity, obs_dim)
        self.actions = torch.zeros(n_tasks, capacity, dtype=torch.long)
        self.rewards = torch.zeros(n_tasks, capacity)
        self.terminated = torch.zeros(n_tasks, capacity)
        self.pos = torch.zeros(n_tasks, dtype=torch.long)
        self.size = torch.zeros(n_tasks, dtype=torch.long)

    def add(self, tasks: Tensor, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor,
            terminated: Tensor) -> None:
        """Append one transition to each of the (distinct) buffers `tasks`."""
        pos = self.pos[tasks]
        self.obs[tasks, pos] = obs
        self.actions[tasks, pos] = actions
        self.rewards[tasks, pos] = rewards
        self.next_obs[tasks, pos] = next_obs
        self.terminated[tasks, pos] = terminated.float()
        self.pos[tasks] = torch.where(pos + 1 >= self.capacity, self.keep_first, pos + 1)
        self.size[tasks] = torch.clamp(self.size[tasks] + 1, max=self.capacity)

    def clear(self, tasks: Tensor) -> None:
        """Empty the buffers `tasks` (a task was replaced by a new one)."""
        self.pos[tasks] = 0
        self.size[tasks] = 0

    def gather(self, tasks: Tensor, slots: Tensor) -> dict[str, Tensor]:
        """Transitions at `slots` [m, n] of buffers `tasks` [m], each field shaped [m, n, ...]."""
        flat = (tasks.unsqueeze(1) * self.capacity + slots).reshape(-1)  # one index_select per field: cheaper
        out = {}
        for name in FIELDS:
            field = getattr(self, name)
            picked = field.reshape(-1, *field.shape[2:]).index_select(0, flat)
            out[name] = picked.view(*slots.shape, *field.shape[2:])
        return out

    def sample_disjoint(
        self, tasks: Tensor, n_support: int, n_query: int, generator: torch.Generator
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Support and query batches per task, drawn without replacement: they never share a transition."""
        need = n_support + n_query
        short = self.size[tasks] < need
        if short.any():
            raise RuntimeError(f"buffers {tasks[short].tolist()} hold fewer than {need} transitions")
        keys = torch.rand(len(tasks), self.capacity, generator=generator)
        keys[torch.arange(self.capacity).unsqueeze(0) >= self.size[tasks].unsqueeze(1)] = 2.0  # empty slots last
        slots = keys.topk(need, dim=1, largest=False).indices  # the `need` smallest keys, in key order
        both = self.gather(tasks, slots)  # one gather; support and query are its two halves
        return {k: v[:, :n_support] for k, v in both.items()}, {k: v[:, n_support:] for k, v in both.items()}

    def sample_after_first(self, tasks: Tensor, n_support: int, n_query: int,
                           generator: torch.Generator) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Support: each task's first n_support transitions (its warm start, in order); query: n_query drawn
        without replacement from the rest. Disjoint by construction."""
        if n_support > self.keep_first:
            raise RuntimeError(f"the first {n_support} transitions are not kept (keep_first {self.keep_first})")
        need = self.keep_first + n_query
        short = self.size[tasks] < need
        if short.any():
            raise RuntimeError(f"buffers {tasks[short].tolist()} hold fewer than {need} transitions")
        keys = torch.rand(len(tasks), self.capacity, generator=generator)
        slot = torch.arange(self.capacity).unsqueeze(0)
        keys[(slot >= self.size[tasks].unsqueeze(1)) | (slot < self.keep_first)] = 2.0  # never drawn
        query = keys.topk(n_query, dim=1, largest=False).indices
        first = torch.arange(n_support).expand(len(tasks), n_support)
        return self.gather(tasks, first), self.gather(tasks, query)

    def state_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).clone() for name in (*FIELDS, "pos", "size")}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, value in state.items():
            current = getattr(self, name)
            if current.shape != value.shape:
                raise ValueError(f"replay buffer field {name}: checkpoint shape {tuple(value.shape)} "
                                 f"does not match this config's {tuple(current.shape)}")
            setattr(self, name, value.clone())

"""One ring buffer per task, kept as stacked tensors [tasks, capacity, ...] so that many tasks sample in one op."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated")
STORED = (*FIELDS, "ended", "stamp")  # ended: the episode ended there (terminated or truncated); stamp: write order


class ReplayBuffers:
    """Per-task ring buffers of (s, a, r, s', terminated); tensors only, so checkpoints load with weights_only.

    With `keep_first` > 0 the ring wraps to slot keep_first instead of 0: each task's first transitions (its
    warm start, collected exactly like meta-test support) are never overwritten.

    With `n_step` > 1 every sampled transition also carries the rewards of the next n_step - 1 transitions of
    its episode ("reward_window" [..., n_step], zeros past the window's end, and "steps", how many it holds),
    and its next_obs and terminated are those of the window's last transition. The window ends early at the
    episode's end or at the newest transition written; the TD target (meta.td.td_target_of) discounts by what
    it holds. The buffer keeps one transition per env step, so sizes, disjointness and warm starts are those
    of n_step 1; only gamma stays with the model. The one-step next observation stays in "next_obs_1" (what the
    `dynamics` inner solver reads).
    """

    def __init__(self, n_tasks: int, capacity: int, obs_dim: int, keep_first: int = 0, n_step: int = 1) -> None:
        if not 0 <= keep_first < capacity:
            raise ValueError(f"keep_first {keep_first} must lie in [0, capacity {capacity})")
        if n_step < 1:
            raise ValueError(f"n_step {n_step} must be >= 1")
        self.capacity = capacity
        self.keep_first = keep_first
        self.n_step = n_step
        self.obs = torch.zeros(n_tasks, capacity, obs_dim)
        self.next_obs = torch.zeros(n_tasks, capacity, obs_dim)
        self.actions = torch.zeros(n_tasks, capacity, dtype=torch.long)
        self.rewards = torch.zeros(n_tasks, capacity)
        self.terminated = torch.zeros(n_tasks, capacity)
        self.ended = torch.zeros(n_tasks, capacity, dtype=torch.bool)
        self.stamp = torch.full((n_tasks, capacity), -1, dtype=torch.long)  # which write of the buffer it is
        self.writes = torch.zeros(n_tasks, dtype=torch.long)  # never reset: old stamps never look current
        self.pos = torch.zeros(n_tasks, dtype=torch.long)
        self.size = torch.zeros(n_tasks, dtype=torch.long)

    def add(self, tasks: Tensor, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor,
            terminated: Tensor, ended: Tensor | None = None) -> None:
        """Append one transition to each of the (distinct) buffers `tasks`; `ended`: the episode ended with
        it (terminated or truncated; default: terminated), which stops n-step windows there. One step of
        `add_steps`."""
        ended = terminated if ended is None else ended
        self.add_steps(tasks.numpy(), *(f.numpy()[None] for f in (obs, actions, rewards, next_obs, terminated,
                                                                   ended.bool())))

    def add_steps(self, tasks: np.ndarray, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                  next_obs: np.ndarray, terminated: np.ndarray, ended: np.ndarray) -> None:
        """S transitions to each of the (distinct) buffers `tasks` [n], fields shaped [S, n, ...] in the order they
        happened, written through NumPy views of the (CPU) tensors, one write per field (cast as torch casts them;
        a warm start writes its hundreds of steps at once). A block longer than a ring (it would overwrite its own
        transitions) goes one step at a time."""
        steps = len(obs)
        if steps > self.capacity - self.keep_first:
            for j in range(steps):
                self.add_steps(tasks, *(f[j:j + 1] for f in (obs, actions, rewards, next_obs, terminated, ended)))
            return
        t = np.asarray(tasks)
        start = self.pos.numpy()[t]
        offset = start + np.arange(steps)[:, None]  # [S, n]: where step j lands, before the ring wraps
        ring = self.capacity - self.keep_first
        pos = np.where(offset >= self.capacity, self.keep_first + (offset - self.capacity) % ring, offset)
        self.obs.numpy()[t, pos] = obs
        self.actions.numpy()[t, pos] = actions
        self.rewards.numpy()[t, pos] = rewards
        self.next_obs.numpy()[t, pos] = next_obs
        self.terminated.numpy()[t, pos] = terminated.astype(np.float32)
        self.ended.numpy()[t, pos] = ended
        writes = self.writes.numpy()
        self.stamp.numpy()[t, pos] = writes[t] + np.arange(steps)[:, None]
        writes[t] += steps
        end = start + steps
        self.pos.numpy()[t] = np.where(end >= self.capacity, self.keep_first + (end - self.capacity) % ring, end)
        size = self.size.numpy()
        size[t] = np.minimum(size[t] + steps, self.capacity)

    def clear(self, tasks: Tensor) -> None:
        """Empty the buffers `tasks` (a task was replaced by a new one)."""
        self.pos[tasks] = 0
        self.size[tasks] = 0

    def gather(self, tasks: Tensor, slots: Tensor, n_step: int | None = None) -> dict[str, Tensor]:
        """Transitions at `slots` [m, n] of buffers `tasks` [m], each field shaped [m, n, ...]; with n_step > 1
        (the buffer's, or this call's) also their reward windows, and next_obs / terminated read at each window's
        last transition."""
        n_step = self.n_step if n_step is None else n_step
        base = (tasks.unsqueeze(1) * self.capacity).expand_as(slots).reshape(-1)
        flat = base + slots.reshape(-1)  # one index_select per field: cheaper
        window, ends = {}, flat
        if n_step > 1:
            rewards, steps, ends = self._window(base, slots.reshape(-1), flat, n_step)
            window = {"reward_window": rewards.view(*slots.shape, n_step), "steps": steps.view(slots.shape),
                      "next_obs_1": self.next_obs.view(-1, self.next_obs.shape[-1]).index_select(0, flat)
                      .view(*slots.shape, -1)}
        out = {}
        for name in FIELDS:
            field = getattr(self, name)
            at = ends if name in ("next_obs", "terminated") else flat
            picked = field.reshape(-1, *field.shape[2:]).index_select(0, at)
            out[name] = picked.view(*slots.shape, *field.shape[2:])
        return {**out, **window}

    def _window(self, base: Tensor, slot: Tensor, flat: Tensor, n_step: int) -> tuple[Tensor, Tensor, Tensor]:
        """The n-step window of each transition at `flat`: its rewards [.., n_step] (zeros past its end), how
        many transitions it holds, and where it ends. A later slot belongs to it when it holds the very next
        write of the buffer (not yet overwritten, already written) and no earlier one ended the episode."""
        stamp, ended, rewards = self.stamp.view(-1), self.ended.view(-1), self.rewards.view(-1)
        first = stamp[flat]
        window, last = [rewards[flat]], flat
        steps = torch.ones_like(flat)
        going = ~ended[flat]
        for j in range(1, n_step):
            slot = torch.where(slot + 1 >= self.capacity, self.keep_first, slot + 1)
            at = base + slot
            going = going & (stamp[at] == first + j)
            window.append(torch.where(going, rewards[at], 0.0))
            last = torch.where(going, at, last)
            steps += going.long()
            going = going & ~ended[at]
        return torch.stack(window, dim=-1), steps, last

    def sequence(self) -> dict[str, Tensor]:
        """Every buffer's transitions in slot order (all buffers hold the same number; none has wrapped), as
        `gather` gives them: the meta-test support batch."""
        size = int(self.size.max())
        if bool((self.size != size).any()) or bool((self.writes > self.capacity).any()):
            raise RuntimeError("sequence() needs buffers of equal size that have not wrapped")
        n = len(self.size)
        return self.gather(torch.arange(n), torch.arange(size).expand(n, size))

    def sample_disjoint(
        self, tasks: Tensor, n_support: int, n_query: int, generator: torch.Generator,
        query_windows: tuple[int, Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Support and query batches per task, drawn without replacement: they never share a transition. With
        `query_windows` (n, mask over `tasks`): see `windowed_query`."""
        need, size = n_support + n_query, self.size[tasks]
        short = size < need
        if short.any():
            raise RuntimeError(f"buffers {tasks[short].tolist()} hold fewer than {need} transitions")
        keys = torch.rand(len(tasks), self.capacity, generator=generator)
        if bool((size < self.capacity).any()):  # empty slots last (full buffers, the usual case, have none)
            keys[torch.arange(self.capacity).unsqueeze(0) >= size.unsqueeze(1)] = 2.0
        slots = keys.topk(need, dim=1, largest=False).indices  # the `need` smallest keys, in key order
        both = self.gather(tasks, slots)  # one gather; support and query are its two halves
        support, query = {k: v[:, :n_support] for k, v in both.items()}, {k: v[:, n_support:] for k, v in both.items()}
        if query_windows is not None:
            return self.windowed_query(tasks, slots[:, n_support:], support, query, *query_windows)
        return support, query

    def sample_after_first(self, tasks: Tensor, n_support: int, n_query: int, generator: torch.Generator,
                           query_windows: tuple[int, Tensor] | None = None
                           ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Support: each task's first n_support transitions (its warm start, in order); query: n_query drawn
        without replacement from the rest. Disjoint by construction. `query_windows`: see `windowed_query`."""
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
        support, query_batch = self.gather(tasks, first), self.gather(tasks, query)
        if query_windows is not None:
            return self.windowed_query(tasks, query, support, query_batch, *query_windows)
        return support, query_batch

    def windowed_query(self, tasks: Tensor, query_slots: Tensor, support: dict[str, Tensor], query: dict[str, Tensor],
                       n_step: int, windowed: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The query rows of the tasks where `windowed` holds get reward windows of `n_step` (n-step targets); every
        other row, the support's included, is its one-step self in the windowed form (`one_step_windows`)."""
        if self.n_step != 1:
            raise ValueError(f"windowed queries need a one-step buffer (n_step {self.n_step})")
        long = self.gather(tasks, query_slots, n_step)
        short = self.one_step_windows(query, n_step)
        pick = {k: windowed.view(-1, *[1] * (v.dim() - 1)) for k, v in long.items()}
        return self.one_step_windows(support, n_step), {k: torch.where(pick[k], v, short[k]) for k, v in long.items()}

    @staticmethod
    def one_step_windows(batch: dict[str, Tensor], n_step: int) -> dict[str, Tensor]:
        """A one-step batch in the n-step form: its reward, then zeros, one step held. Its n-step TD target is the
        one-step target exactly (r + 0 + ..., discount gamma^1), so one-step and windowed rows can share a batch."""
        rewards = batch["rewards"]
        window = torch.cat([rewards.unsqueeze(-1), rewards.new_zeros(*rewards.shape, n_step - 1)], dim=-1)
        return {**batch, "reward_window": window, "steps": torch.ones_like(batch["actions"]),
                "next_obs_1": batch["next_obs"]}

    def state_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).clone() for name in (*STORED, "writes", "pos", "size")}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Checkpoints from before n-step windows lack `ended`/`stamp`/`writes`: n_step 1 never reads them."""
        if self.n_step > 1 and "stamp" not in state:
            raise ValueError("n_step > 1 needs a checkpoint with episode ends and write stamps (written with "
                             "data.n_step); this one has none")
        for name, value in state.items():
            current = getattr(self, name)
            if current.shape != value.shape:
                raise ValueError(f"replay buffer field {name}: checkpoint shape {tuple(value.shape)} "
                                 f"does not match this config's {tuple(current.shape)}")
            setattr(self, name, value.clone())

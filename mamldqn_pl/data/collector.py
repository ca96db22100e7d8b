"""Steps a batched task environment with an epsilon-greedy policy and writes each transition to its task's buffer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from mamldqn_pl.data.replay import ReplayBuffers

QValues = Callable[[Tensor], Tensor]  # observations [n, obs_dim] -> action values [n, n_actions]
# a support batch ({field: [tasks, N, ...]}) and action mask [tasks, n_actions] -> the tasks' adapted QValues
AdaptedQValues = Callable[[dict[str, Tensor], Tensor | None], QValues]


def valid_actions(counts: Tensor, n_actions: int) -> Tensor:
    """[..., n_actions] mask of each row's first counts[...] actions (a mixed family's smaller action sets)."""
    return torch.arange(n_actions, device=counts.device) < counts.unsqueeze(-1)


def masked_argmax(q: Tensor, counts: Tensor | None) -> Tensor:
    """argmax over each row's valid actions."""
    if counts is None:
        return q.argmax(dim=-1)
    return q.masked_fill(~valid_actions(counts.to(q.device), q.shape[-1]), float("-inf")).argmax(dim=-1)


def epsilon_greedy(q: Tensor, epsilon: float, generator: torch.Generator, counts: Tensor | None = None) -> Tensor:
    """Greedy actions, each replaced by a uniform random valid action with probability epsilon."""
    n, n_actions = q.shape
    explore = torch.rand(n, generator=generator) < epsilon
    if counts is None or bool((counts == n_actions).all()):
        random_actions = torch.randint(n_actions, (n,), generator=generator)
        counts = None
    else:
        random_actions = (torch.rand(n, generator=generator) * counts).long()
    if epsilon >= 1.0:  # rand < 1 always: every action explores (the same draws, no argmax)
        return random_actions
    return torch.where(explore, random_actions, masked_argmax(q, counts).cpu())


class Collector:
    """Owns nothing but bookkeeping: which slot steps, its running episode return, its env-step count."""

    def __init__(self, env, buffers: ReplayBuffers, generator: torch.Generator) -> None:
        self.env = env
        self.buffers = buffers
        self.generator = generator
        n = len(env)
        self.running_return = torch.zeros(n, dtype=torch.float64)
        self.env_steps = torch.zeros(n, dtype=torch.long)
        self.finished_returns: list[float] = []

    def restart(self, slots: np.ndarray) -> None:
        """Slots that got a new task: new episode, empty buffer, zero counters."""
        self.env.reset(slots)
        self.buffers.clear(torch.as_tensor(slots))
        self.running_return[slots] = 0.0
        self.env_steps[slots] = 0

    @torch.no_grad()
    def step(self, slots: np.ndarray, q_values: QValues, epsilon: float) -> None:
        """One env step in each of `slots` (distinct) with epsilon-greedy actions on q_values. The counters are
        updated through NumPy views: a warm start takes hundreds of these steps one after the other."""
        obs = torch.from_numpy(self.env.obs[slots])
        counts = torch.from_numpy(self.env.action_counts[slots])
        # at epsilon 1 (a support played at random) no action is greedy: skip the forward pass; the random draws,
        # and so the actions, are the same either way
        q = q_values(obs) if epsilon < 1.0 else torch.zeros(len(slots), self.env.n_actions)
        actions = epsilon_greedy(q, epsilon, self.generator, counts)
        next_obs, reward, terminated, truncated = self.env.step(actions.numpy(), slots)
        done = terminated | truncated
        self.buffers.add(torch.as_tensor(slots), obs, actions, torch.from_numpy(reward), torch.from_numpy(next_obs),
                         torch.from_numpy(terminated), torch.from_numpy(done))
        self.env_steps.numpy()[slots] += 1
        running = self.running_return.numpy()
        running[slots] += reward.astype(np.float64)
        if done.any():
            ended = slots[done]
            self.finished_returns.extend(running[ended].tolist())
            running[ended] = 0.0

    def pop_finished_returns(self) -> list[float]:
        out, self.finished_returns = self.finished_returns, []
        return out

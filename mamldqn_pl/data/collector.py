"""Steps a batched task environment with an epsilon-greedy policy and writes each transition to its task's buffer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def _exploration_draws(n: int, n_actions: int, epsilon: float, generator: torch.Generator,
                       counts: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Which of n rows explore (probability epsilon), a uniform random valid action for each, and the counts
    that matter (None when every row has every action)."""
    explore = torch.rand(n, generator=generator) < epsilon
    if counts is None or bool((counts == n_actions).all()):
        return explore, torch.randint(n_actions, (n,), generator=generator), None
    return explore, (torch.rand(n, generator=generator) * counts).long(), counts


def epsilon_greedy(q: Tensor, epsilon: float, generator: torch.Generator, counts: Tensor | None = None) -> Tensor:
    """Greedy actions, each replaced by a uniform random valid action with probability epsilon."""
    explore, random_actions, counts = _exploration_draws(*q.shape, epsilon, generator, counts)
    if epsilon >= 1.0:  # rand < 1 always: every action explores (the same draws, no argmax)
        return random_actions
    return torch.where(explore, random_actions, masked_argmax(q, counts).cpu())


def extended_epsilon_greedy(q: Tensor, epsilon: float, generator: torch.Generator, left: np.ndarray,
                            held: np.ndarray, max_duration: int, counts: Tensor | None = None) -> np.ndarray:
    """epsilon-greedy with temporally extended exploration (ez-greedy, Dabney et al. 2021): a row not inside an
    exploratory run starts one with probability epsilon, a uniform random valid action held for a duration drawn
    uniformly from 1..max_duration steps; a row inside a run plays its held action whatever q says. Why: random
    play that persists swings a pendulum up or a car over a hill where per-step random play dithers in place
    (500 random steps on 32 of the acrobot family's tasks: no episode ends per-step, 14 with runs of up to 8;
    benchmarks/explore_duration.py).
    `left` and `held` (these rows' steps left in their run and its action) are updated in place."""
    explore, random_actions, counts = _exploration_draws(*q.shape, epsilon, generator, counts)
    durations = torch.randint(1, max_duration + 1, (q.shape[0],), generator=generator).numpy()
    random_actions = random_actions.numpy()
    in_run, start = left > 0, explore.numpy() & (left == 0)
    greedy = random_actions if epsilon >= 1.0 else masked_argmax(q, counts).cpu().numpy()  # all explore at 1
    actions = np.where(in_run, held, np.where(start, random_actions, greedy))
    left[:] = np.where(in_run, left - 1, np.where(start, durations - 1, 0))
    held[:] = np.where(start, random_actions, held)
    return actions


class Collector:
    """Owns nothing but bookkeeping: which slot steps, its running episode return, its env-step count."""

    def __init__(self, env, buffers: ReplayBuffers, generator: torch.Generator, explore_duration: int = 1) -> None:
        self.env = env
        self.buffers = buffers
        self.generator = generator
        self.explore_duration = explore_duration  # > 1: extended_epsilon_greedy with runs of up to this many steps
        n = len(env)
        self.running_return = torch.zeros(n, dtype=torch.float64)
        self.env_steps = torch.zeros(n, dtype=torch.long)
        self.explore_left = torch.zeros(n, dtype=torch.long)  # steps left in each slot's exploratory run
        self.explore_action = torch.zeros(n, dtype=torch.long)  # and the action it holds
        self.finished_returns: list[float] = []

    def restart(self, slots: np.ndarray) -> None:
        """Slots that got a new task: new episode, empty buffer, zero counters, no exploratory run."""
        self.env.reset(slots)
        self.buffers.clear(torch.as_tensor(slots))
        self.running_return[slots] = 0.0
        self.env_steps[slots] = 0
        self.explore_left[slots] = 0

    def _actions(self, slots: np.ndarray, q: Tensor, epsilon: float, counts: Tensor | None) -> np.ndarray:
        if self.explore_duration == 1:
            return epsilon_greedy(q, epsilon, self.generator, counts).numpy()
        left, held = self.explore_left.numpy()[slots], self.explore_action.numpy()[slots]
        actions = extended_epsilon_greedy(q, epsilon, self.generator, left, held, self.explore_duration, counts)
        self.explore_left.numpy()[slots], self.explore_action.numpy()[slots] = left, held
        return actions

    def step(self, slots: np.ndarray, q_values: QValues, epsilon: float) -> None:
        """One env step in each of `slots` (distinct) with epsilon-greedy actions on q_values."""
        self.run(slots, q_values, [epsilon])

    @torch.no_grad()
    def run(self, slots: np.ndarray, q_values: QValues, epsilons: Sequence[float]) -> None:
        """len(epsilons) env steps in each of `slots` (distinct), step j epsilon-greedy at epsilons[j]: the same
        transitions, draws and counters as that many `step` calls. Why one call: a warm start takes hundreds of
        steps of one or two slots one after the other, each a few dozen small NumPy and torch calls; here their
        buffer writes go in one block at the end (nothing reads the buffers in between) and every counter is a
        NumPy view. At epsilon 1 (a support played at random) no action is greedy: the forward pass is skipped."""
        n = len(slots)
        if n == 0 or not len(epsilons):
            return
        counts_np = self.env.action_counts[slots]
        counts = None if bool((counts_np == self.env.n_actions).all()) else torch.from_numpy(counts_np)
        no_values = torch.zeros(n, self.env.n_actions)  # at epsilon 1 the draws alone pick the actions
        running, finished = self.running_return.numpy(), self.finished_returns
        fields: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminated",
                                                               "ended")}
        for epsilon in epsilons:
            obs = self.env.obs[slots]
            q = q_values(torch.from_numpy(obs)) if epsilon < 1.0 else no_values
            actions = self._actions(slots, q, epsilon, counts)
            next_obs, reward, terminated, truncated = self.env.step(actions, slots)
            done = terminated | truncated
            for name, value in zip(fields, (obs, actions, reward, next_obs, terminated, done)):
                fields[name].append(value)
            running[slots] += reward.astype(np.float64)
            if done.any():
                ended = slots[done]
                finished.extend(running[ended].tolist())
                running[ended] = 0.0
        self.buffers.add_steps(slots, **{name: np.stack(values) for name, values in fields.items()})
        self.env_steps.numpy()[slots] += len(epsilons)

    def pop_finished_returns(self) -> list[float]:
        out, self.finished_returns = self.finished_returns, []
        return out

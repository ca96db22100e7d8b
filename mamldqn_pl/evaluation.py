"""The meta-test protocol (design.md section 3): one function serves validation during fit, `mamldqn test`
and the benchmarks.

For each held-out task and evaluation seed: a fresh empty buffer, `adapt_budget` env steps of
epsilon_adapt-greedy play with the initialisation, K inner steps (the training inner update, the frozen
initialisation as target) for each K, then greedy episodes. All tasks x seeds run as one batch of slots.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from mamldqn_pl.data.collector import Collector, masked_argmax, valid_actions
from mamldqn_pl.data.replay import ReplayBuffers
from mamldqn_pl.meta import InnerLoop, QNetwork, batched_q, split_for_adaptation, td_target
from mamldqn_pl.meta.qnet import FastWeights
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import Task


@dataclass(frozen=True)
class Protocol:
    """Meta-test settings; the inner learning rate and loss come from the trained model."""

    adapt_budget: int = 200
    epsilon_adapt: float = 0.25
    ks: tuple[int, ...] = (0, 1, 3, 5, 10)
    episodes: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)


def eval_budgets(main: int, budgets: Sequence[int] | None = None) -> list[int]:
    """New-task env steps the test protocol runs at: the trained adapt_budget `main` and, by default, around
    it (x 1/4, 1/2, 2)."""
    chosen = budgets or [main // 4, main // 2, main, 2 * main]
    return sorted({b for b in chosen if b > 0} | {main})


def weights_device(tensors: dict[str, Tensor]) -> torch.device:
    """The device the (fast) weights live on: evaluation runs there, environments stay on the CPU."""
    return next(iter(tensors.values())).device


def _greedy_returns(net: QNetwork, params: FastWeights, fast: FastWeights, family, tasks: Sequence[Task],
                    episodes: int, generator: torch.Generator) -> Tensor:
    """Mean undiscounted return of `episodes` greedy episodes per slot; fast weights carry a slot dim."""
    n = len(tasks)
    env = family.batched([t for t in tasks for _ in range(episodes)], generator)
    rep = torch.arange(n).repeat_interleave(episodes)
    fast_rep = {k: v[rep] for k, v in fast.items()}
    total = torch.zeros(n * episodes, dtype=torch.float64)
    alive = torch.ones(n * episodes, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(env.max_episode_steps):
            obs = torch.from_numpy(env.obs).to(weights_device(fast)).unsqueeze(1)
            q = batched_q(net, params, fast_rep, obs).squeeze(1)
            actions = masked_argmax(q, torch.from_numpy(env.action_counts)).cpu()
            _, reward, terminated, truncated = env.step(actions.numpy())
            total += alive.double() * torch.from_numpy(reward).double()
            alive &= ~torch.from_numpy(terminated | truncated)
            if not alive.any():
                break
    return total.view(n, episodes).mean(dim=1)


def evaluate_init(net: QNetwork, params: FastWeights, family, tasks: Sequence[Task], adapt: str,
                  inner: InnerLoop, gamma: float, protocol: Protocol, seeds: Sequence[int] | None = None,
                  label: str = "init") -> list[dict]:
    """Run the protocol for one initialisation `params`; one row per (task, seed, K)."""
    seeds = list(protocol.seeds if seeds is None else seeds)
    slots = [t for _ in seeds for t in tasks]
    slot_seed = [s for s in seeds for _ in tasks]
    n = len(slots)
    params = {k: v.detach() for k, v in params.items()}
    generator = make_generator(*seeds, 7919)
    rows: list[dict] = []
    with torch.inference_mode(False), torch.enable_grad():
        split = split_for_adaptation(net, params, adapt)
        fast = {k: v.expand(n, *v.shape).clone() for k, v in split.fast.items()}
        if protocol.adapt_budget > 0:
            env = family.batched(slots, generator)
            buffers = ReplayBuffers(n, protocol.adapt_budget, family.obs_dim)
            collector = Collector(env, buffers, generator)
            everyone = np.arange(n)
            device = weights_device(params)

            def q_init(obs: Tensor) -> Tensor:
                return torch.func.functional_call(net, params, (obs.to(device),))

            for _ in range(protocol.adapt_budget):
                collector.step(everyone, q_init, protocol.epsilon_adapt)
            data = {name: getattr(buffers, name).to(device) for name in ("obs", "actions", "rewards", "terminated")}
            valid = valid_actions(torch.from_numpy(env.action_counts).to(device), family.n_actions)
            with torch.no_grad():
                support = {
                    "x": split.encode(data["obs"]),
                    "actions": data["actions"],
                    "target": td_target(data["rewards"], data["terminated"], q_init(buffers.next_obs), gamma,
                                        valid.unsqueeze(1)),
                }
            step = torch.func.vmap(lambda f, b, k: inner.step(split.q_fn, f, b, k), in_dims=(0, 0, None))
        done = 0
        for k in sorted(set(protocol.ks)):
            if k > 0 and protocol.adapt_budget == 0:
                raise ValueError("adapt_budget is 0: no data to take inner steps on")
            while done < k:
                fast = {name: w.detach() for name, w in step(fast, support, done).items()}
                done += 1
            returns = _greedy_returns(net, params, fast, family, slots, protocol.episodes, generator)
            for i, value in enumerate(returns.tolist()):
                rows.append({"init": label, "task": slots[i].index, "group": slots[i].group,
                             "seed": slot_seed[i], "k": k, "budget": protocol.adapt_budget, "return": value})
    return rows


def evaluate_scratch(net: QNetwork, family, tasks: Sequence[Task], adapt: str, inner: InnerLoop, gamma: float,
                     protocol: Protocol) -> list[dict]:
    """The same protocol from a fresh random initialisation, a different one per evaluation seed, with the
    plain inner learning rate (learned Meta-SGD rates belong to their initialisation)."""
    inner = replace(inner, log_lrs=None)
    rows: list[dict] = []
    for seed in protocol.seeds:
        fresh = copy.deepcopy(net)
        with torch.random.fork_rng():  # leave the caller's RNG stream untouched
            torch.manual_seed(10_000 + seed)
            for layer in fresh.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.reset_parameters()
        rows += evaluate_init(fresh, dict(fresh.named_parameters()), family, tasks, adapt, inner, gamma,
                              protocol, seeds=[seed], label="scratch")
    return rows

"""The meta-test protocol (design.md section 3): one function serves validation during fit, `mamldqn test`
and the benchmarks.

For each held-out task and evaluation seed: a fresh empty buffer, `adapt_budget` env steps of
epsilon_adapt-greedy play with the initialisation, K inner steps (the training inner update, the frozen
initialisation as target) for each K, then greedy episodes. All tasks x seeds run as one batch of slots.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from mamldqn_pl.data.collector import Collector, masked_argmax, valid_actions
from mamldqn_pl.data.replay import ReplayBuffers
from mamldqn_pl.distributed import gather_objects, world
from mamldqn_pl.meta import InnerLoop, QNetwork, batch_targets, batched_q, split_for_adaptation
from mamldqn_pl.meta.dynamics import dynamics_fields
from mamldqn_pl.meta.inner import LINEAR_HEAD
from mamldqn_pl.meta.qnet import AdaptSplit, FastWeights
from mamldqn_pl.meta.ridge import refresh_fields
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
    n_step: int = 1  # the data's n-step windows: the support's TD targets are those the init was trained with

    @classmethod
    def of(cls, data, ks, episodes: int, seeds, budget: int | None = None) -> Protocol:
        """The protocol with a data module's support budget (or `budget`), exploration and n-step windows
        (`data`: its hparams; checkpoints from before data.n_step mean 1)."""
        return cls(adapt_budget=data["adapt_budget"] if budget is None else budget,
                   epsilon_adapt=data["epsilon_adapt"], ks=tuple(ks), episodes=episodes, seeds=tuple(seeds),
                   n_step=int(data.get("n_step", 1)))


def eval_budgets(main: int, budgets: Sequence[int] | None = None) -> list[int]:
    """New-task env steps the test protocol runs at: the trained adapt_budget `main` and, by default, around
    it (x 1/4, 1/2, 2)."""
    chosen = budgets or [main // 4, main // 2, main, 2 * main]
    return sorted({b for b in chosen if b > 0} | {main})


def weights_device(tensors: dict[str, Tensor]) -> torch.device:
    """The device the (fast) weights live on: evaluation runs there, environments stay on the CPU."""
    return next(iter(tensors.values())).device


def greedy_returns(net: QNetwork, params: FastWeights, fast: FastWeights, env, episodes: int = 1) -> Tensor:
    """Mean undiscounted return of `episodes` greedy episodes, one after another, in each slot of `env`; slot i
    acts with fast weights [i] (the rest of `params` shared). An episode still running after the env's
    max_episode_steps is cut there and counted with the return it has."""
    n = len(env)
    total = torch.zeros(n, dtype=torch.float64)
    finished = torch.zeros(n, dtype=torch.long)
    running = torch.zeros(n, dtype=torch.float64)
    elapsed = torch.zeros(n, dtype=torch.long)
    device = weights_device(fast)
    with torch.no_grad():
        for _ in range(env.max_episode_steps * episodes):
            obs = torch.from_numpy(env.obs).to(device).unsqueeze(1)
            q = batched_q(net, params, fast, obs).squeeze(1)
            actions = masked_argmax(q, torch.from_numpy(env.action_counts)).cpu()
            _, reward, terminated, truncated = env.step(actions.numpy())
            alive = finished < episodes
            running += alive.double() * torch.from_numpy(reward).double()
            elapsed += 1
            ended = torch.from_numpy(terminated | truncated)
            cut = (elapsed >= env.max_episode_steps) & ~ended  # a longer time limit than ours: reset it here
            if cut.any():
                env.reset(np.flatnonzero(cut.numpy()))
            done = ended | cut
            if (done & alive).any():
                total += torch.where(done & alive, running, 0.0)
                finished += (done & alive).long()
                running[done], elapsed[done] = 0.0, 0
            if bool((finished >= episodes).all()):
                break
    return total / episodes


def collect(collector: Collector, q_fn, steps: int, epsilon: float) -> None:
    """`steps` epsilon-greedy env steps in every slot of the collector's env."""
    collector.run(np.arange(len(collector.env)), q_fn, [epsilon] * steps)


def support_batch(split: AdaptSplit, buffers: ReplayBuffers, action_counts: np.ndarray, n_actions: int, q_target,
                  gamma: float, device: torch.device, advantage: float = 0.0, solver: str = "sgd") -> dict[str, Tensor]:
    """Every transition in each slot's buffer as one inner-loop batch; TD targets from `q_target` (the frozen
    initialisation), n-step when the buffers keep windows, with the inner loop's advantage learning term; with
    `solver` "ridge" also what the ridge solver's later steps refresh them from, with "dynamics" the outcome
    fields its posterior is computed from. All slots hold the same number of transitions."""
    data = {name: value.to(device) for name, value in buffers.sequence().items()}
    valid = valid_actions(torch.from_numpy(action_counts).to(device), n_actions).unsqueeze(1)
    target = batch_targets(data, q_target, gamma, valid, advantage)
    with torch.no_grad():
        batch = {"x": split.encode(data["obs"]), "actions": data["actions"], "target": target}
        if solver == "dynamics":
            batch |= dynamics_fields(split.outcome_head, batch["x"], data, valid=valid)
    return batch | refresh_fields(data, split.encode, gamma, valid) if solver == "ridge" else batch


def adapted_weights(split: AdaptSplit, inner: InnerLoop, support: dict[str, Tensor] | None, ks: Sequence[int],
                    n: int) -> Iterator[tuple[int, FastWeights]]:
    """The fast weights of n slots after K inner steps on each slot's support batch, for every K in `ks`
    (ascending); one path of steps serves them all. Detached: nothing flows back to the initialisation."""
    if support is None and any(k > 0 for k in ks):
        raise ValueError("no support data (budget 0) to take inner steps on")
    fast = {k: v.detach().expand(n, *v.shape).clone() for k, v in split.fast.items()}
    if inner.solver != "sgd" and support is not None:  # every K's heads from one factorisation (or posterior)
        heads = inner.exact_heads(fast["head.weight"], fast["head.bias"], support, max(ks))
        for k in sorted(set(ks)):
            yield k, {"head.weight": heads[k][0].detach(), "head.bias": heads[k][1].detach()}
        return
    if set(fast) == LINEAR_HEAD:  # head-only: the written-out step, equal and much cheaper
        step = inner.linear_head_step
    else:
        step = torch.func.vmap(lambda f, b, k: inner.step(split.q_fn, f, b, k), in_dims=(0, 0, None))
    done = 0
    for k in sorted(set(ks)):
        while done < k:
            fast = {name: w.detach() for name, w in step(fast, support, done).items()}
            done += 1
        yield k, fast


def evaluate_init(net: QNetwork, params: FastWeights, family, tasks: Sequence[Task], adapt: str,
                  inner: InnerLoop, gamma: float, protocol: Protocol, seeds: Sequence[int] | None = None,
                  label: str = "init", collect_params: FastWeights | None = None,
                  target_params: FastWeights | None = None) -> list[dict]:
    """Run the protocol for one initialisation `params`; one row per (task, seed, K). `collect_params`: the
    weights whose epsilon-greedy play fills the support (default `params`, as at meta-test); a diagnosis that
    moves `params` can hold the support's transitions fixed with it (benchmarks/val_noise.py). `target_params`:
    the weights whose values make the support's TD targets (default `params`, the frozen initialisation); a
    diagnosis can hand one init another's targets (benchmarks/failure_modes.py --targets-from)."""
    seeds = list(protocol.seeds if seeds is None else seeds)
    slots = [t for _ in seeds for t in tasks]
    slot_seed = [s for s in seeds for _ in tasks]
    n = len(slots)
    params = {k: v.detach() for k, v in params.items()}
    generator = make_generator(*seeds, 7919)
    device = weights_device(params)

    def q_of(weights: FastWeights):
        return lambda obs: torch.func.functional_call(net, weights, (obs.to(device),))

    q_init = q_of(params)
    q_play = q_init if collect_params is None else q_of({k: v.detach() for k, v in collect_params.items()})
    q_target = q_init if target_params is None else q_of({k: v.detach() for k, v in target_params.items()})

    rows: list[dict] = []
    with torch.inference_mode(False), torch.enable_grad():
        split = split_for_adaptation(net, params, adapt)
        support = None
        if protocol.adapt_budget > 0:
            env = family.batched(slots, generator)
            buffers = ReplayBuffers(n, protocol.adapt_budget, family.obs_dim, n_step=protocol.n_step)
            collect(Collector(env, buffers, generator), q_play, protocol.adapt_budget, protocol.epsilon_adapt)
            support = support_batch(split, buffers, env.action_counts, family.n_actions, q_target, gamma, device,
                                    inner.advantage, inner.solver)
        rep = torch.arange(n).repeat_interleave(protocol.episodes)
        for k, fast in adapted_weights(split, inner, support, protocol.ks, n):
            episodes = family.batched([t for t in slots for _ in range(protocol.episodes)], generator)
            returns = greedy_returns(net, params, {name: w[rep] for name, w in fast.items()}, episodes)
            for i, value in enumerate(returns.view(n, protocol.episodes).mean(dim=1).tolist()):
                rows.append({"init": label, "task": slots[i].index, "group": slots[i].group,
                             "seed": slot_seed[i], "k": k, "budget": protocol.adapt_budget, "return": value})
    return rows


def evaluate_shared(net: QNetwork, family, tasks: Sequence[Task], adapt: str, inner: InnerLoop, gamma: float,
                    protocol: Protocol, scratch: bool = False) -> list[dict]:
    """The protocol's rows for `net` (and fresh random inits too with `scratch`); under DDP each rank takes its
    share of the tasks and every rank returns all rows."""
    rank, size = world()
    mine = list(tasks)[rank::size]
    rows: list[dict] = []
    if mine:
        rows = evaluate_init(net, dict(net.named_parameters()), family, mine, adapt, inner, gamma, protocol,
                             label="meta-init")
        if scratch:
            rows += evaluate_scratch(net, family, mine, adapt, inner, gamma, protocol)
    return [row for part in gather_objects(rows) for row in part]


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

"""The LightningDataModule: task sets, the batched environment, one replay buffer per task, meta-batches.

Data flows one way: tasks -> env/collector -> buffers -> support/query batches. The only thing that comes
back from the module is the policy used to collect (`attach_policy`), as in any DQN. num_workers stays 0:
a DataLoader worker would hold stale copies of the policy and the buffers; `data.collection process` has its
own process instead, which is handed the policy before every batch (data/ahead.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset

from mamldqn_pl.data.ahead import CollectionProcess
from mamldqn_pl.data.collector import AdaptedQValues, Collector, QValues, valid_actions
from mamldqn_pl.data.replay import ReplayBuffers
from mamldqn_pl.distributed import gather_objects, world
from mamldqn_pl.errors import ConfigError, require
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import Task, make_family


class _MetaStepTickets(IterableDataset):
    """Endless stream of tickets, one per meta-step; `on_before_batch_transfer` turns each into a meta-batch.

    When Lightning cannot know an epoch's length (a float limit_train_batches) it fetches one item ahead of
    the step it trains: collecting there would act with weights one step old and leave, at a checkpoint, a
    batch collected but never trained on. A ticket costs nothing, so collection happens when the meta-step
    asks for its batch, and a checkpoint after step N holds the data state of step N (with `data.collection`
    ahead or process, that includes step N+1's batch, collected ahead with step N's weights).
    """

    def __iter__(self) -> Iterator[int]:
        while True:
            yield 0


class MetaDQNDataModule(pl.LightningDataModule):
    """Owns the task pool, its environments and buffers, and yields one support/query batch per meta-step.

    Args:
        family: cartpole, mountaincar, acrobot, nav2d, gym (any env id) or mixed (several families).
        ranges: {parameter: [low, high]} for training and validation tasks (default: the family's).
        test_ranges: ranges for the held-out test tasks (default: `ranges`).
        flip: draw a hidden action flip per task (action a means n-1-a; CartPole: the force sign);
            default: on for cartpole, off for the others.
        env_id: the gymnasium env id of the `gym` family.
        env_kwargs: family options (nav2d: directions 4 or 8; mixed: member_feature, a one-hot of the member after
            the padded observation).
        members: for `mixed`, a list of {family, ranges, flip, env_id, env_kwargs, pool_share}; pool_share (all
            members or none) weighs a member's slots in the training pool; validation and test stay one per member.
        pool_size: tasks in the training pool at once.
        tasks_per_batch: tasks sampled per meta-step (m).
        collect_steps: env steps per sampled task per meta-step.
        support_size, query_size: transitions per task in the support and query batches (disjoint).
        buffer_capacity: transitions kept per task.
        adapt_budget: env steps a new task is warm-started with (epsilon_adapt-greedy on the current init),
            the same as the meta-test protocol's support collection.
        epsilon_adapt: exploration of that warm start and of meta-test support collection.
        learning_starts: transitions in each buffer before it is sampled (>= support_size + query_size).
        retire_after: env steps after which a pool task is replaced by a freshly sampled one (0: never).
        retire_every: look for tasks past retire_after every this many meta-batches (1: every one). The tasks
            found together are warm-started together, in one batched collection of learning_starts steps: one
            warm start per retired task costs about as much as a whole meta-step's collection, so checking every
            ~100 batches makes the data side about 30% cheaper, at the price of task lives up to that many
            batches longer. Off by default: with 100 on configs/cartpole.yaml, 5 seeds gave results no different
            from the default's beyond the run-to-run chaos (last checkpoints 204 against 212 pooled,
            docs/results/seeds_retire_every_100.md), and the default stays the validated configuration.
        support_from: where the support batch comes from: "random" (support_size transitions drawn from the
            buffer, disjoint from the query) or "warm_start" (each task's first support_size transitions, which
            are its warm start by the initialisation at epsilon_adapt: the meta-test support data; kept for the
            task's life; the query is drawn from the rest). Train as you test.
        collect_adapted: share of each meta-step's sampled tasks that collect with their own adapted policy
            (epsilon-greedy on theta after the inner loop on a support batch of that task) instead of theta's.
            The query data then also covers the states that the adapted policy visits, as at meta-test.
        collect_adapted_per: "meta_step": each meta-step picks collect_adapted of its sampled tasks at random to act
            with their adapted policy, so a task's episodes switch between theta and its adapted policy from one
            meta-step to the next (a flipped task's episode ends as soon as theta acts); "task": the first
            collect_adapted share of the pool's slots always act with their adapted policy and the rest with
            theta, so adapted episodes run as long as the adapted policy keeps them going, as at meta-test.
        collection: when and where each meta-step's batch is collected. "current" (the validated default):
            right before its meta-step, with the current theta. "ahead": meta-step t+1's batch is collected
            with theta_t (and step t's epsilon) before step t trains, so the data lag theta by one meta-step: a
            different run from "current", not a faster copy of it. "process": the batches of "ahead", bitwise,
            collected by a forked CPU process while step t trains, which takes the data side (collection, warm
            starts, sampling) off the training path. One process, a CPU module (the fork cannot use CUDA).
        n_step: TD targets over this many consecutive transitions of an episode (1: plain one-step DQN). Each
            sampled transition carries the next n_step - 1 rewards of its episode (ReplayBuffers); the same
            holds for the meta-test support. Reward reaches the values n times faster per bootstrap, which
            matters where it is sparse (MountainCar, Acrobot) and makes the targets lean less on theta^-.
        query_n_step: > 1: the query transitions of the adapted slots (collect_adapted_per task) carry this many
            rewards of their episode (n-step targets), all other rows stay one-step, the support included, as
            at meta-test. Why: theta^- does not know a task's flip, so its values are those of a pole that
            nobody controls (about a dozen steps on CartPole); one-step targets from it see the track's edge
            only a few steps ahead, while the adapted policies' own rewards reach as far as the window.
        explore_duration: > 1: meta-training's collection (warm starts included) explores in runs: an exploratory
            action is held for a duration drawn uniformly from 1..explore_duration steps (temporally extended
            epsilon-greedy, Dabney et al. 2021; `collector.extended_epsilon_greedy`). Meta-test, validation and
            `adapt` collect as before. Why: on Acrobot a DQN whose greedy play never reaches the goal sees
            only per-step random actions, which dither in place; held ones swing the links up.
        n_val_tasks, n_test_tasks: sizes of the validation and held-out test task sets.
        train_seed, val_seed, test_seed: seeds of the three task sets (must differ).
    """

    def __init__(
        self,
        family: str = "cartpole",
        ranges: dict[str, list[float]] | None = None,
        test_ranges: dict[str, list[float]] | None = None,
        flip: bool | None = None,
        env_id: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        members: list[dict[str, Any]] | None = None,
        pool_size: int = 64,
        tasks_per_batch: int = 32,
        collect_steps: int = 4,
        support_size: int = 128,
        query_size: int = 128,
        buffer_capacity: int = 2000,
        adapt_budget: int = 200,
        epsilon_adapt: float = 0.25,
        learning_starts: int = 256,
        retire_after: int = 2000,
        retire_every: int = 1,
        support_from: str = "random",
        collect_adapted: float = 0.0,
        collect_adapted_per: str = "meta_step",
        collection: str = "current",
        n_step: int = 1,
        query_n_step: int = 1,
        explore_duration: int = 1,
        n_val_tasks: int = 16,
        n_test_tasks: int = 20,
        train_seed: int = 0,
        val_seed: int = 1,
        test_seed: int = 2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.family = make_family(family, ranges, flip, env_id, env_kwargs, members, "data.ranges")
        require(test_ranges is None or family != "mixed",
                "data.test_ranges: not supported for a mixed family; leave it unset")
        self.test_family = self.family if test_ranges is None else make_family(
            family, test_ranges, flip, env_id, env_kwargs, None, "data.test_ranges")
        for name in ("pool_size", "tasks_per_batch", "collect_steps", "support_size", "query_size",
                     "buffer_capacity", "n_val_tasks", "n_test_tasks"):
            value = self.hparams[name]
            require(isinstance(value, int) and value >= 1, f"data.{name}: {value!r} must be an integer >= 1")
        require(tasks_per_batch <= pool_size,
                f"data.tasks_per_batch: {tasks_per_batch} exceeds the task pool (data.pool_size = {pool_size})")
        need = support_size + query_size
        require(learning_starts >= need,
                f"data.learning_starts: {learning_starts} is below support_size + query_size = {need}")
        require(adapt_budget >= 0, f"data.adapt_budget: {adapt_budget} must be >= 0")
        require(learning_starts >= adapt_budget,
                f"data.learning_starts: {learning_starts} is below data.adapt_budget = {adapt_budget}")
        require(buffer_capacity >= learning_starts,
                f"data.buffer_capacity: {buffer_capacity} is below data.learning_starts = {learning_starts}")
        require(0.0 <= epsilon_adapt <= 1.0, f"data.epsilon_adapt: {epsilon_adapt} must lie in [0, 1]")
        require(retire_after == 0 or retire_after > learning_starts,
                f"data.retire_after: {retire_after} must be 0 (never) or above learning_starts = {learning_starts}")
        require(isinstance(retire_every, int) and retire_every >= 1,
                f"data.retire_every: {retire_every!r} must be an integer >= 1")
        require(isinstance(explore_duration, int) and explore_duration >= 1,
                f"data.explore_duration: {explore_duration!r} must be an integer >= 1 (1: plain epsilon-greedy)")
        require(support_from in ("random", "warm_start"), f"data.support_from: {support_from!r}; allowed: random, "
                "warm_start")
        if support_from == "warm_start":
            require(support_size <= adapt_budget, f"data.support_size: {support_size} exceeds data.adapt_budget = "
                    f"{adapt_budget} (with support_from warm_start the support is the warm start's first transitions)")
            require(learning_starts >= adapt_budget + query_size,
                    f"data.learning_starts: {learning_starts} is below adapt_budget + query_size = "
                    f"{adapt_budget + query_size} (support_from warm_start draws the query after the warm start)")
            require(buffer_capacity > learning_starts, f"data.buffer_capacity: {buffer_capacity} must exceed "
                    f"data.learning_starts = {learning_starts} with support_from warm_start")
        require(0.0 <= collect_adapted <= 1.0, f"data.collect_adapted: {collect_adapted} must lie in [0, 1]")
        require(isinstance(n_step, int) and n_step >= 1, f"data.n_step: {n_step!r} must be an integer >= 1")
        require(isinstance(query_n_step, int) and query_n_step >= 1,
                f"data.query_n_step: {query_n_step!r} must be an integer >= 1")
        if query_n_step > 1:
            require(n_step == 1, f"data.query_n_step: {query_n_step} needs data.n_step 1 (it is {n_step}): the "
                    "support and theta's slots stay one-step")
            require(collect_adapted > 0 and collect_adapted_per == "task",
                    f"data.query_n_step: {query_n_step} windows the adapted slots' queries; it needs "
                    f"data.collect_adapted > 0 (it is {collect_adapted}) and data.collect_adapted_per task "
                    f"(it is {collect_adapted_per})")
        require(collect_adapted_per in ("meta_step", "task"),
                f"data.collect_adapted_per: {collect_adapted_per!r}; allowed: meta_step, task")
        require(collection in ("current", "ahead", "process"),
                f"data.collection: {collection!r}; allowed: current, ahead, process")
        require(len({train_seed, val_seed, test_seed}) == 3,
                f"data seeds must differ: train {train_seed}, val {val_seed}, test {test_seed}")
        self.obs_dim = self.family.obs_dim
        self.n_actions = self.family.n_actions
        self.obs_scale = list(self.family.obs_scale)
        self.val_tasks: list[Task] = self.family.sample(n_val_tasks, make_generator(val_seed), balanced=True)
        self.test_tasks: list[Task] = self.test_family.sample(n_test_tasks, make_generator(test_seed),
                                                                  balanced=True)
        self._q_values: QValues | None = None
        self._adapted_q_values: AdaptedQValues | None = None
        self._epsilon: Callable[[], float] = lambda: 1.0
        self._policy_tensors: Callable[[], dict[str, torch.Tensor]] = dict
        self._pending: dict | None = None  # the next meta-step's batch, collected ahead
        self._process: CollectionProcess | None = None
        self._built = False

    # ---- wiring -------------------------------------------------------------------------------------------
    def attach_policy(self, q_values: QValues, epsilon: Callable[[], float],
                      adapted_q_values: AdaptedQValues | None = None,
                      policy_tensors: Callable[[], dict[str, torch.Tensor]] | None = None) -> None:
        """The module's current Q-function (obs -> values, on CPU), exploration schedule and, for
        collect_adapted, the map from a support batch to each task's adapted Q-function; for collection
        "process", the tensors those two read (the process acts with a copy of them)."""
        self._q_values, self._epsilon, self._adapted_q_values = q_values, epsilon, adapted_q_values
        self._policy_tensors = policy_tensors or dict

    def setup(self, stage: str) -> None:
        if stage == "fit" and not self._built:
            self._build(rank=world()[0])

    def teardown(self, stage: str) -> None:
        """The collection process hands its data state back (this process's copy is stale while it runs)."""
        self._stop_process()

    def on_exception(self, exception: BaseException) -> None:
        """Ctrl-C or an error ends the fit: the collection process goes at once, not at interpreter exit."""
        if self._process is not None:
            process, self._process = self._process, None
            process.kill()

    def _stop_process(self) -> None:
        if self._process is None:
            return
        if not self._process.process.is_alive():  # it failed: receive() has raised why; its state is gone with it
            self._process = None
            return
        self._receive_in_flight()
        process, self._process = self._process, None
        self._load_local(process.stop())

    def _receive_in_flight(self) -> None:
        """The batch the collection process is working on becomes the pending one (it holds the data state
        after that batch, which a checkpoint or a hand-back must match)."""
        if self._process is not None and self._process.in_flight:
            self._pending = self._process.receive()

    def _build(self, rank: int, salt: int = 0) -> None:
        """Training streams mix the run's seed (seed_everything), the task seed and the rank: each rank its own
        tasks, and another seed_everything another run, while validation and test tasks stay fixed. `salt`
        (the step count) gives a resume with another world size streams unlike those of the run's start."""
        hp = self.hparams
        run_seed = torch.initial_seed()
        self.task_generator = make_generator(hp.train_seed, run_seed, rank, salt, 0)
        self.generator = make_generator(hp.train_seed, run_seed, rank, salt, 1)
        self.pool: list[Task] = self.family.sample(hp.pool_size, self.task_generator)
        self.env = self.family.batched(self.pool, make_generator(hp.train_seed, run_seed, rank, salt, 2))
        self.batches = 0
        keep = hp.adapt_budget if hp.support_from == "warm_start" else 0
        self.buffers = ReplayBuffers(hp.pool_size, hp.buffer_capacity, self.obs_dim, keep_first=keep,
                                     n_step=hp.n_step)
        self.collector = Collector(self.env, self.buffers, self.generator, hp.explore_duration)
        self.warm = np.zeros(hp.pool_size, dtype=bool)
        self._pending = None
        self._built = True

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_MetaStepTickets(), batch_size=None, num_workers=0)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """A training ticket becomes the meta-batch of this step; test batches pass through."""
        if self.trainer is not None and self.trainer.training:
            return self.next_batch()
        return batch

    def test_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)  # the meta-test protocol runs in the module's test hooks

    # ---- one meta-batch -----------------------------------------------------------------------------------
    def _warm_start(self, slots: np.ndarray, q_values: QValues, epsilon: float) -> None:
        """New tasks, like at meta-test: adapt_budget steps of the init at epsilon_adapt, then top up."""
        hp = self.hparams
        self.collector.restart(slots)
        self.collector.run(slots, q_values,
                           [hp.epsilon_adapt] * hp.adapt_budget + [epsilon] * (hp.learning_starts - hp.adapt_budget))
        self.warm[slots] = True

    def _retire(self) -> None:
        hp = self.hparams
        if hp.retire_after == 0 or self.batches % hp.retire_every:
            return
        old = np.flatnonzero(self.collector.env_steps.numpy() >= hp.retire_after)
        if len(old):
            slots = old.tolist()
            fresh = self.family.sample_like([self.pool[slot] for slot in slots], self.task_generator)
            for slot, task in zip(slots, fresh):
                self.pool[slot] = task
            self.env.set_tasks(old, fresh)
            self.warm[old] = False

    def _support_query(self, tasks: torch.Tensor, n_query: int) -> tuple[dict, dict]:
        hp = self.hparams
        windows = None
        if hp.query_n_step > 1 and n_query:  # the adapted slots' queries get their episodes' rewards
            windows = (hp.query_n_step, tasks < round(hp.collect_adapted * hp.pool_size))
        if hp.support_from == "warm_start":
            return self.buffers.sample_after_first(tasks, hp.support_size, n_query, self.generator, windows)
        return self.buffers.sample_disjoint(tasks, hp.support_size, n_query, self.generator, windows)

    def _collect(self, tasks: torch.Tensor, counts: torch.Tensor, q_values: QValues,
                 adapted_q_values: AdaptedQValues | None, epsilon: float) -> None:
        """collect_steps env steps in each sampled task: the first collect_adapted share of them (a random
        subset: `tasks` is a random draw), or with collect_adapted_per "task" those in the adapted slots, act
        with their adapted policy, the rest with theta's."""
        hp = self.hparams
        if hp.collect_adapted_per == "task":  # slots below collect_adapted x pool_size first, in drawn order
            first = tasks < round(hp.collect_adapted * hp.pool_size)
            order = torch.cat([first.nonzero().flatten(), (~first).nonzero().flatten()])
            tasks, counts, n_adapted = tasks[order], counts[order], int(first.sum())
        else:
            n_adapted = round(hp.collect_adapted * len(tasks))
        if n_adapted:
            if adapted_q_values is None:
                raise RuntimeError("data.collect_adapted > 0 needs the module's adapted policy (attach_policy)")
            support, _ = self._support_query(tasks[:n_adapted], 0)
            adapted = adapted_q_values(support, valid_actions(counts[:n_adapted], self.n_actions))
            theta = q_values

            def q_values(obs: torch.Tensor) -> torch.Tensor:  # rows in the order of `tasks`
                parts = [adapted(obs[:n_adapted])] + ([theta(obs[n_adapted:])] if n_adapted < len(obs) else [])
                return torch.cat(parts)

        self.collector.run(tasks.numpy(), q_values, [epsilon] * hp.collect_steps)

    def next_batch(self) -> dict:
        """This meta-step's batch: collected now with the current policy ("current"), or the one collected
        ahead at the previous step, while the next one is collected with the current policy ("ahead": here,
        "process": in the collection process, while this step trains)."""
        if self._q_values is None:
            raise RuntimeError("no policy attached: the module calls attach_policy() in setup()")
        mode = self.hparams.collection
        self._receive_in_flight()
        if self._pending is None:  # nothing collected ahead: "current", or the first step of a run
            self._pending = self._make_batch(self._q_values, self._adapted_q_values, self._epsilon())
        batch, self._pending = self._pending, None
        if mode == "ahead":
            self._pending = self._make_batch(self._q_values, self._adapted_q_values, self._epsilon())
        elif mode == "process":
            if self._process is None:
                self._process = self._start_process()
            self._process.request(self._epsilon())
        return batch

    def _start_process(self) -> CollectionProcess:
        require(world()[1] == 1, "data.collection: process runs one collection process per run; with "
                                 f"{world()[1]} processes (DDP) use ahead")
        live = self._policy_tensors()
        device = {t.device.type for t in live.values()}
        require(device <= {"cpu"}, f"data.collection: process needs the module on the CPU (it is on "
                                   f"{', '.join(sorted(device))}); use ahead")
        return CollectionProcess(self, live)

    def _make_batch(self, q_values: QValues, adapted_q_values: AdaptedQValues | None, epsilon: float) -> dict:
        """Collect with the given policy, then draw disjoint support/query batches for m sampled tasks."""
        hp = self.hparams
        if not self.warm.all():
            self._warm_start(np.flatnonzero(~self.warm), q_values, epsilon)
        tasks = torch.randperm(hp.pool_size, generator=self.generator)[: hp.tasks_per_batch]
        slots = tasks.numpy()
        counts = torch.from_numpy(self.env.action_counts[slots])  # before a retirement changes the slots' tasks
        self._collect(tasks, counts, q_values, adapted_q_values, epsilon)
        support, query = self._support_query(tasks, hp.query_size)
        self._retire()
        self.batches += 1
        return {
            "support": support,
            "query": query,
            "tasks": tasks,
            "action_mask": valid_actions(counts, self.n_actions),
            "episode_returns": torch.tensor(self.collector.pop_finished_returns(), dtype=torch.float32),
            "env_steps": torch.tensor(len(slots) * hp.collect_steps),
        }

    # ---- checkpointing ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Every rank's pool, buffers, env and RNG state (gathered: only rank 0 writes the checkpoint)."""
        if not self._built:
            return {}
        self._receive_in_flight()
        local = self._local_state() if self._process is None else self._process.state()  # it holds the data
        if self._pending is not None:  # collected ahead for the next meta-step: a resume trains on it
            local = {**local, "pending": self._pending}
        ranks = gather_objects(local)
        return {"world_size": len(ranks), "ranks": ranks}

    def _local_state(self) -> dict:
        return {
            "pool": [t.to_dict() for t in self.pool],
            "buffers": self.buffers.state_dict(),
            "env": self.env.get_state(),
            "running_return": self.collector.running_return.clone(),
            "env_steps": self.collector.env_steps.clone(),
            "warm": torch.from_numpy(self.warm.copy()),
            **({"explore": (self.collector.explore_left.clone(), self.collector.explore_action.clone())}
               if self.hparams.explore_duration > 1 else {}),
            "batches": self.batches,
            "rng": {
                "task": self.task_generator.get_state(),
                "collect": self.generator.get_state(),
                "env": self.env.generator.get_state(),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore this rank's own state; with another world size, re-seed fresh pools and say so."""
        if not state:
            return
        self._stop_process()
        rank, size = world()
        if state.get("world_size") != size:
            batches = max(r["batches"] for r in state["ranks"])
            rank_zero_warn(f"the checkpoint was taken with {state.get('world_size')} processes, this run has {size}: "
                           "task pools, replay buffers and RNG streams are re-seeded (parameters, optimiser, "
                           "target network and step count are restored)")
            self._build(rank=rank, salt=batches)
            return
        if not self._built:
            self._build(rank=rank)
        self._load_local(state["ranks"][rank])

    def _load_local(self, state: dict) -> None:
        require(len(state["pool"]) == self.hparams.pool_size,
                f"checkpoint from another config: task pool of {len(state['pool'])}, this config has "
                f"data.pool_size = {self.hparams.pool_size}")
        self.pool = [Task(**t) for t in state["pool"]]
        self.env.set_tasks(np.arange(len(self.pool)), self.pool)
        self.env.set_state(state["env"])
        try:
            self.buffers.load_state_dict(state["buffers"])
        except ValueError as err:
            raise ConfigError(f"checkpoint from another config: {err}") from None
        self.collector.running_return = state["running_return"].clone()
        self.collector.env_steps = state["env_steps"].clone()
        self.warm = state["warm"].numpy().copy()
        if "explore" in state:
            self.collector.explore_left, self.collector.explore_action = (t.clone() for t in state["explore"])
        self.batches = state["batches"]
        self.task_generator.set_state(state["rng"]["task"])
        self.generator.set_state(state["rng"]["collect"])
        self.env.generator.set_state(state["rng"]["env"])
        self._pending = state.get("pending")

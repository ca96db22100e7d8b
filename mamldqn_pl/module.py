"""The LightningModule: one meta-step reads like the seed's algorithm (design.md section 1, steps 1-7).

The inner DQN steps are pure torch.func code (mamldqn_pl.meta); this module only holds theta and theta^-,
builds the per-task batches, takes one manual_backward of the meta-loss per meta-step, and logs.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics.aggregation import MeanMetric

from mamldqn_pl.callbacks import AdaptationReport
from mamldqn_pl.errors import require
from mamldqn_pl.meta import InnerLoop, QNetwork, batch_targets, batched_q, split_for_adaptation
from mamldqn_pl.meta.body import q_values as body_q_values
from mamldqn_pl.meta.dynamics import dynamics_fields, outcome_scale, outcomes
from mamldqn_pl.meta.noise import relative_noise, step_seed
from mamldqn_pl.meta.qnet import AdaptSplit
from mamldqn_pl.meta.ridge import refresh_fields
from mamldqn_pl.schedules import cosine

# algorithm -> (which parameters adapt, first order) it implies
ALGORITHMS: dict[str, tuple[str, bool]] = {
    "maml": ("all", False),      # second-order MAML on every parameter: the seed's form
    "fomaml": ("all", True),     # first-order MAML: the inner gradients are treated as constants
    "anil": ("head", False),     # only the last layer adapts; the body is meta-learned and shared
    "metasgd": ("all", False),   # MAML with learned, positive inner learning rates per step and tensor
    "reptile": ("all", True),    # no query gradient: the outer step moves theta toward the adapted weights
    "multitask": ("head", False),  # no inner loop in training: DQN on all tasks' data (the baseline)
}


def resolve_algorithm(algorithm: str, adapt: str | None, first_order: bool | None,
                      inner_steps: int) -> tuple[str, bool]:
    """The adapt mode and order an algorithm runs with; a contradicting explicit setting is a ConfigError."""
    require(algorithm in ALGORITHMS, f"model.algorithm: {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    default_adapt, default_fo = ALGORITHMS[algorithm]
    adapt = default_adapt if adapt is None else adapt
    first_order = default_fo if first_order is None else first_order
    require(adapt in ("head", "all"), f"model.adapt: {adapt!r}; allowed: head, all")
    fixed = {"fomaml": ("first_order", True), "anil": ("adapt", "head"), "reptile": ("adapt", "all")}
    if algorithm in fixed:
        key, value = fixed[algorithm]
        given = first_order if key == "first_order" else adapt
        require(given == value, f"model.{key}: {given!r} contradicts model.algorithm {algorithm} ({key} {value})")
    if algorithm == "reptile":
        require(inner_steps >= 2, f"model.inner_steps: {inner_steps}; Reptile needs at least 2 (with 1 it is "
                                  "joint training)")
    return adapt, first_order


class MAMLDQN(pl.LightningModule):
    """Meta-learns a DQN initialisation theta.

    Args:
        obs_dim, n_actions, obs_scale: linked from the data module; never typed twice.
        hidden: widths of the body's hidden layers.
        layer_norm: a LayerNorm without weights after each hidden layer (before its ReLU): features of fixed
            scale, so the head's inner step size cannot drift as theta trains.
        init_checkpoint: a checkpoint whose initialisation (its theta, or its EMA) theta, theta^- and the EMA
            start from when a fit begins (a resumed run keeps what it restored): e.g. a network
            pretrained with algorithm multitask, whose own policy already reaches the goals that the meta-init's
            data needs. Only the network: the optimiser, schedules, step count and Meta-SGD's rates start afresh.
        algorithm: maml, fomaml, anil (default), metasgd, reptile or multitask (see ALGORITHMS).
        adapt: which parameters the inner loop adapts, "head" or "all"; defaults to the algorithm's. For
            multitask it is what `test` fine-tunes.
        first_order: drop second-order terms of the meta-gradient; defaults to the algorithm's.
        inner_steps, inner_lr: K and alpha of the inner loop (also the meta-test defaults; Meta-SGD's initial rate).
        inner_solver: "sgd" (K gradient steps of rate inner_lr) or "ridge" (head-only: K exact proximal
            least-squares steps of the head, each later one bootstrapping from the head reached; mamldqn_pl/meta/
            ridge.py), in training, at meta-test and in `adapt` alike.
            "dynamics" (head-only): no TD loss in the inner loop; the step is the posterior over relabelings of
            the actions given the support's transitions (s' - s and r against the action, under an outcome head the
            network gets) and the head becomes the posterior-mean relabeling of its rows, so a hidden flip is read
            off the transitions (mamldqn_pl/meta/dynamics.py).
        ridge_lambda: the ridge steps' proximal strength lambda (> 0): how far one step may move the head.
        dynamics_loss_weight: with the dynamics solver, the weight of the query's outcome error (expected under the
            posterior) in the meta-objective: what trains the outcome head directly (0: only through the TD loss).
        dynamics_temperature: with the dynamics solver, the outcome noise of its posterior (> 0): a smaller one
            trusts the support's transitions more.
        td_normalize: divide every TD loss by the task's value scale (mean |target| + 1).
        multi_step_loss: meta-objective = mean query loss after each inner step (MAML++), not only the last.
        meta_lr: learning rate of the outer step (Adam; plain SGD for Reptile, whose step is a move toward
            the adapted weights).
        weight_noise: 0 (off) or sigma of random weight perturbation: each meta-gradient is taken at theta plus
            Gaussian noise of sigma times each tensor's rms (one draw per meta-step, from the run's seed and the
            step) and applied to theta, so that the objective asks for an init whose adaptation survives small
            moves of theta. Theta itself never keeps the noise.
        adam_eps: Adam's epsilon. At its default (1e-8) a parameter whose meta-gradient is tiny but not zero
            (a nearly dead unit's) still moves by about meta_lr per step, a random walk; a larger epsilon (DQN
            practice: 1.5e-4 in Rainbow) scales such steps down with their gradient.
        meta_lr_schedule: "constant", or "cosine" from meta_lr down to meta_lr_min at meta_lr_horizon meta-steps
            (default trainer.max_steps), so that the last meta-steps move theta little and the last checkpoint
            is a settled one. The rate is a function of the step alone: a resumed run follows the same curve.
        ema_decay: 0 (off) or the decay of an exponential moving average of theta (updated after every
            meta-step: ema <- decay * ema + (1 - decay) * theta). When on, the average is the initialisation
            that validation, `best` checkpoints, `test` and `adapt` use; collection and the meta-gradient
            keep using theta.
        gamma: discount; td_loss: "huber" or "mse"; meta_reduction: "mean" or "sum" (the seed) over tasks.
        double_dqn: meta-training's TD targets take a' from theta and its value from theta^- (Double DQN). At
            meta-test the target network is the frozen initialisation itself, so there it changes nothing.
        advantage_learning: alpha of advantage learning in every TD target, in training and at meta-test
            (0: off): non-greedy actions' targets fall by alpha times their gap, which widens action gaps.
        query_target: the network whose values at the query's next states make the query TD targets of the
            meta-objective. "shared": theta^-, the same for every task. "adapted": theta_i^-, theta^- after the
            same K inner steps on task i's support (its own TD targets, no gradient), the seed's task-specific
            target network (its section 4.2), so that the query targets bootstrap from values that know the task.
            With double_dqn, a' comes from theta_i (theta after the same K steps) and its value from theta_i^-.
            Meta-test is unchanged (its support targets come from the frozen initialisation).
        pre_loss_weight: lambda of an extra term lambda x (query TD loss of theta itself, before adaptation) in
            the meta-objective (0: off). The MAML objective alone never asks theta's own policy to be good, and
            theta collects the data: on sparse-reward families its K = 0 policy never reaches a goal, so no
            buffer ever holds one. The term makes theta a DQN too (the multitask objective), beside adaptation.
        grad_clip: max norm of the meta-gradient (0: off).
        epsilon_start, epsilon_end, epsilon_decay_steps: linear exploration schedule over meta-steps.
        num_threads: torch CPU threads; 1 suits small networks on a busy small CPU.
        test_ks, test_episodes, test_seeds, test_budgets: the meta-test protocol of `mamldqn test`; the
            budgets (new-task env steps) default to adapt_budget x (1/4, 1/2, 1, 2).
    """

    def __init__(
        self,
        obs_dim: int = 4,
        n_actions: int = 2,
        obs_scale: list[float] | None = None,
        hidden: list[int] | None = None,
        layer_norm: bool = False,
        init_checkpoint: str | None = None,
        algorithm: Literal["maml", "fomaml", "anil", "metasgd", "reptile", "multitask"] = "anil",
        adapt: Literal["head", "all"] | None = None,
        first_order: bool | None = None,
        inner_steps: int = 3,
        inner_lr: float = 0.05,
        inner_solver: Literal["sgd", "ridge", "dynamics"] = "sgd",
        ridge_lambda: float = 1.0,
        dynamics_loss_weight: float = 1.0,
        dynamics_temperature: float = 1.0,
        td_normalize: bool = False,
        multi_step_loss: bool = False,
        meta_lr: float = 1e-3,
        adam_eps: float = 1e-8,
        weight_noise: float = 0.0,
        meta_lr_schedule: Literal["constant", "cosine"] = "constant",
        meta_lr_min: float = 0.0,
        meta_lr_horizon: int | None = None,
        ema_decay: float = 0.0,
        gamma: float = 0.99,
        td_loss: Literal["huber", "mse"] = "huber",
        double_dqn: bool = False,
        advantage_learning: float = 0.0,
        meta_reduction: Literal["mean", "sum"] = "mean",
        query_target: Literal["shared", "adapted"] = "shared",
        pre_loss_weight: float = 0.0,
        grad_clip: float = 10.0,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.05,
        epsilon_decay_steps: int = 2000,
        num_threads: int | None = 1,
        test_ks: list[int] | None = None,
        test_episodes: int = 5,
        test_seeds: list[int] | None = None,
        test_budgets: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # under LightningCLI these are the config's values, None included
        hidden = [64, 64] if hidden is None else hidden
        self.test_ks = [0, 1, 3, 5, 10] if test_ks is None else test_ks
        self.test_seeds = [0, 1, 2] if test_seeds is None else test_seeds
        require(inner_steps >= 0, f"model.inner_steps: {inner_steps} must be >= 0")
        require(inner_lr > 0, f"model.inner_lr: {inner_lr} must be > 0")
        require(inner_solver in ("sgd", "ridge", "dynamics"),
                f"model.inner_solver: {inner_solver!r}; allowed: sgd, ridge, dynamics")
        require(dynamics_loss_weight >= 0, f"model.dynamics_loss_weight: {dynamics_loss_weight} must be >= 0")
        require(dynamics_temperature > 0, f"model.dynamics_temperature: {dynamics_temperature} must be > 0")
        require(ridge_lambda > 0, f"model.ridge_lambda: {ridge_lambda} must be > 0")
        require(meta_lr > 0, f"model.meta_lr: {meta_lr} must be > 0")
        require(adam_eps > 0, f"model.adam_eps: {adam_eps} must be > 0")
        require(weight_noise >= 0, f"model.weight_noise: {weight_noise} must be >= 0 (0 turns it off)")
        require(meta_lr_schedule in ("constant", "cosine"),
                f"model.meta_lr_schedule: {meta_lr_schedule!r}; allowed: constant, cosine")
        require(0.0 <= meta_lr_min <= meta_lr, f"model.meta_lr_min: {meta_lr_min} must lie in [0, meta_lr]")
        require(meta_lr_horizon is None or meta_lr_horizon >= 1,
                f"model.meta_lr_horizon: {meta_lr_horizon} must be >= 1 (or unset: trainer.max_steps)")
        require(0.0 <= ema_decay < 1.0, f"model.ema_decay: {ema_decay} must lie in [0, 1) (0 turns it off)")
        require(0.0 <= gamma <= 1.0, f"model.gamma: {gamma} must lie in [0, 1]")
        require(0.0 <= advantage_learning < 1.0,
                f"model.advantage_learning: {advantage_learning} must lie in [0, 1) (0 turns it off)")
        require(pre_loss_weight >= 0, f"model.pre_loss_weight: {pre_loss_weight} must be >= 0 (0 turns it off)")
        require(pre_loss_weight == 0 or algorithm not in ("multitask", "reptile"),
                f"model.pre_loss_weight: {pre_loss_weight} has no meaning for algorithm {algorithm} (allowed: 0)")
        require(query_target in ("shared", "adapted"),
                f"model.query_target: {query_target!r}; allowed: shared, adapted")
        require(query_target == "shared" or algorithm not in ("multitask", "reptile"),
                f"model.query_target: {query_target!r} has no meaning for algorithm {algorithm} (allowed: shared)")
        require(grad_clip >= 0, f"model.grad_clip: {grad_clip} must be >= 0 (0 turns clipping off)")
        require(all(h >= 1 for h in hidden), f"model.hidden: {hidden} must be positive widths")
        require(all(k >= 0 for k in self.test_ks), f"model.test_ks: {self.test_ks} must be >= 0")
        require(len(self.test_seeds) >= 1, "model.test_seeds: give at least one evaluation seed")
        require(epsilon_decay_steps >= 1, f"model.epsilon_decay_steps: {epsilon_decay_steps} must be >= 1")
        for name in ("epsilon_start", "epsilon_end"):
            require(0.0 <= self.hparams[name] <= 1.0, f"model.{name}: {self.hparams[name]} must lie in [0, 1]")
        require(num_threads is None or num_threads >= 1, f"model.num_threads: {num_threads} must be >= 1")
        self.algorithm, self.query_target = algorithm, query_target
        self.adapt, self.first_order = resolve_algorithm(algorithm, adapt, first_order, inner_steps)
        if inner_solver == "ridge":
            require(self.adapt == "head" and algorithm not in ("metasgd", "reptile"),
                    f"model.inner_solver ridge adapts the head only: not with model.adapt {self.adapt} or "
                    f"model.algorithm {algorithm} (allowed: anil, maml or fomaml with model.adapt head, multitask)")
            clashes = {"td_normalize": td_normalize, "double_dqn": double_dqn, "advantage_learning": advantage_learning}
            for name, on in clashes.items():
                require(not on, f"model.{name}: {self.hparams[name]!r} does not combine with model.inner_solver ridge "
                                "(whose later steps bootstrap from the plain max of the adapted head)")
        if inner_solver == "dynamics":
            require(n_actions <= 5, f"n_actions: {n_actions}; model.inner_solver dynamics weighs every relabeling "
                                    "of the actions (n_actions! of them): allowed up to 5")
            require(self.adapt == "head" and algorithm not in ("metasgd", "reptile", "multitask"),
                    f"model.inner_solver dynamics mixes the head's rows: not with model.adapt {self.adapt} or "
                    f"model.algorithm {algorithm} (allowed: anil, maml or fomaml with model.adapt head)")
            require(not td_normalize, "model.td_normalize: True does not combine with model.inner_solver dynamics "
                                      "(whose inner steps fit no TD loss)")
        self.automatic_optimization = False
        self.net = QNetwork(obs_dim, n_actions, hidden, obs_scale, layer_norm, dynamics=inner_solver == "dynamics")
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)  # theta^-: never gets a gradient
        self.ema: AveragedModel | None = None
        if ema_decay > 0:
            self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)).requires_grad_(False)
        self.log_inner_lr: nn.Parameter | None = None
        if algorithm == "metasgd":
            n_fast = len(split_for_adaptation(self.net, dict(self.net.named_parameters()), self.adapt).fast)
            self.log_inner_lr = nn.Parameter(torch.full((max(inner_steps, 1), n_fast), math.log(inner_lr)))
        self.inner = InnerLoop(lr=inner_lr, steps=inner_steps, first_order=self.first_order, loss=td_loss,
                               log_lrs=self.log_inner_lr, normalize=td_normalize,
                               multi_step=multi_step_loss, advantage=advantage_learning, solver=inner_solver,
                               ridge_lambda=ridge_lambda, dynamics_weight=dynamics_loss_weight,
                               dynamics_temperature=dynamics_temperature)
        self.episode_return = MeanMetric()
        self._last_log_time: float | None = None
        self._env_steps_since_log = 0
        self._run_seed = 0

    # ---- wiring -------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """model.init_checkpoint: load it before the first meta-step, and before the data module's warm start
        (its first batch), so that the loaded network also collects the first data. Not on a resume: Lightning
        has restored the run's own weights by now (its step count only later, hence trainer.ckpt_path)."""
        path = self.hparams.get("init_checkpoint")
        if not path or self.trainer.ckpt_path is not None:
            return
        from mamldqn_pl.metainit import init_weights  # metainit builds modules: imported where it is used

        weights = init_weights(path, self.net.state_dict())
        with torch.no_grad():
            for net in (self.net, self.target_net, *([self.ema.module] if self.ema is not None else [])):
                net.load_state_dict(weights)

    def setup(self, stage: str) -> None:
        if self.hparams.num_threads:
            torch.set_num_threads(self.hparams.num_threads)
        datamodule = getattr(self.trainer, "datamodule", None)
        self._run_seed = torch.initial_seed()  # seed_everything's: weight_noise draws from it, also on a resume
        if datamodule is not None and stage == "fit":
            datamodule.attach_policy(self.q_values, self.epsilon, self.adapted_q_values, self.policy_tensors)

    @property
    def init_net(self) -> QNetwork:
        """The initialisation that is evaluated and handed on: the EMA of theta when ema_decay > 0, else theta."""
        return self.net if self.ema is None else self.ema.module

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.net.parameters()) + ([self.log_inner_lr] if self.log_inner_lr is not None else [])
        if self.algorithm == "reptile":  # theta <- theta + meta_lr * (mean adapted - theta), exactly
            return torch.optim.SGD(params, lr=self.hparams.meta_lr)
        # foreach: one multi-tensor update of all parameters instead of a loop over them (the single-tensor
        # form is torch's default on the CPU); the same arithmetic, bitwise (tests/test_module.py)
        return torch.optim.Adam(params, lr=self.hparams.meta_lr, eps=self.hparams.adam_eps, foreach=True)

    def meta_lr_at(self, step: int) -> float:
        """The outer learning rate of meta-step `step` (0-based): constant, or cosine to meta_lr_min."""
        hp = self.hparams
        if hp.meta_lr_schedule == "constant":
            return hp.meta_lr
        horizon = hp.meta_lr_horizon or self.trainer.max_steps
        require(horizon > 0, "model.meta_lr_schedule cosine needs trainer.max_steps or model.meta_lr_horizon")
        return cosine(hp.meta_lr, hp.meta_lr_min, step, horizon)

    @torch.no_grad()
    def q_values(self, obs: Tensor) -> Tensor:
        """Q(s, .) of the current initialisation theta, for collection (on CPU in, CPU out)."""
        return self.net(obs.to(self.device)).cpu()

    @torch.no_grad()
    def adapted_q_values(self, support: dict[str, Tensor], mask: Tensor | None) -> Callable[[Tensor], Tensor]:
        """Q-functions of each task's theta adapted with the inner loop on `support` ([tasks, N] fields), for
        collection with the adapted policy: row i of the observations is task i's. Runs without autograd (here
        and in the returned function, which the collector calls under no_grad): the adapted weights are new
        tensors that never reach theta, and no meta-gradient flows."""
        params = dict(self.net.named_parameters())  # the module's own: the body runs without functional_call
        split = split_for_adaptation(self.net, params, self.adapt, fast_body=self.inner.written_out)
        support = {k: v.to(self.device) for k, v in support.items()}
        mask = None if mask is None else mask.to(self.device)  # the collector's masks live on the CPU
        fast = self.inner.adapted_no_grad(split.q_fn, split.fast, self._inner_batch(split, support, mask))

        def q(obs: Tensor) -> Tensor:
            obs = obs.to(self.device)
            if self.adapt == "head":  # shared body, one small head per task: no vmap needed
                feats = split.encode(obs)
                return (torch.einsum("mf,maf->ma", feats, fast["head.weight"]) + fast["head.bias"]).cpu()
            return batched_q(self.net, params, fast, obs.unsqueeze(1)).squeeze(1).cpu()

        return q

    def policy_tensors(self) -> dict[str, Tensor]:
        """Every tensor that q_values and adapted_q_values read (theta, theta^-, Meta-SGD's rates), by name: a
        collection process copies these into its own copy of the module to act exactly as this one would."""
        out = {f"net.{k}": v for k, v in self.net.state_dict(keep_vars=True).items()}
        out.update({f"target_net.{k}": v for k, v in self.target_net.state_dict(keep_vars=True).items()})
        if self.log_inner_lr is not None:
            out["log_inner_lr"] = self.log_inner_lr
        return out

    def epsilon(self) -> float:
        hp = self.hparams
        frac = min(1.0, self.global_step / hp.epsilon_decay_steps)
        return hp.epsilon_start + frac * (hp.epsilon_end - hp.epsilon_start)

    # ---- the meta-objective -------------------------------------------------------------------------------
    def _inner_batch(self, split: AdaptSplit, data: dict[str, Tensor], mask: Tensor | None,
                     refresh: bool = True) -> dict[str, Tensor]:
        """Inputs of the fast part and fixed TD targets from theta^- (a' from theta with double_dqn) for a
        [tasks, N] batch; with `refresh` also what the solver reads from a support beyond them (`_solver_fields`)."""
        batch = {"x": split.encode(data["obs"]), "actions": data["actions"],
                 "target": self._td_targets(data, self._theta_minus(), mask)}
        return batch | self._solver_fields(split, data, batch["x"], mask) if refresh else batch

    def _theta_minus(self) -> Callable[[Tensor], Tensor]:
        """theta^-'s Q-function for TD targets: on the fast paths with the body pass of `meta.body` (bitwise
        target_net's own forward, fewer passes over the rows), else target_net itself (the reference)."""
        if self.inner.written_out:
            return lambda obs: body_q_values(self.target_net, obs)
        return self.target_net

    def _solver_fields(self, split: AdaptSplit, data: dict[str, Tensor], x: Tensor,
                       mask: Tensor | None) -> dict[str, Tensor]:
        """What the inner solver reads from a support beyond x, actions and targets (x: its rows' features): the
        ridge solver's refresh fields, the dynamics solver's outcome fields, nothing for SGD steps."""
        if self.inner.dynamics:
            return dynamics_fields(split.outcome_head, x, data, valid=mask)
        if not self.inner.ridge:
            return {}
        return refresh_fields(data, split.encode, self.hparams.gamma, None if mask is None else mask.unsqueeze(1))

    def _td_targets(self, data: dict[str, Tensor], q_target: Callable[[Tensor], Tensor],
                    mask: Tensor | None, online: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """The TD targets of a [tasks, N] batch with the network `q_target` at the next observations (and with
        `online`, by default theta, picking a' under double_dqn); `mask` [tasks, A] keeps missing actions out of
        the max."""
        online = (online or self.net) if self.hparams.double_dqn else None
        return batch_targets(data, q_target, self.hparams.gamma, None if mask is None else mask.unsqueeze(1),
                             self.inner.advantage, online)

    def _support_and_query(self, split: AdaptSplit, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Both inner batches from one pass of the body and of theta^- over support and query rows together
        (fewer, larger products). First-order head-only adaptation passes the support rows without autograd:
        their features get no meta-gradient there, so the body's backward covers the query rows only."""
        mask = batch.get("action_mask")
        if self.first_order and self.adapt == "head" and self.algorithm != "multitask":
            with torch.no_grad():
                support = self._inner_batch(split, batch["support"], mask)
            query = self._inner_batch(split, batch["query"], mask, refresh=False)
        else:
            n = batch["support"]["obs"].shape[1]
            joined = self._inner_batch(split, {k: torch.cat([v, batch["query"][k]], dim=1)
                                               for k, v in batch["support"].items()}, mask, refresh=False)
            parts = {k: v.split([n, v.shape[1] - n], dim=1) for k, v in joined.items()}
            support, query = {k: v[0] for k, v in parts.items()}, {k: v[1] for k, v in parts.items()}
            if self.algorithm != "multitask":  # the query rows and multitask training take no inner step
                support |= self._solver_fields(split, batch["support"], support["x"], mask)
        if self.inner.dynamics:  # the query's outcomes, in the support's scale, for the outcome error
            scale = outcome_scale(outcomes(batch["support"]))
            query |= dynamics_fields(split.outcome_head, query["x"], batch["query"], scale, mask)
        if self.query_target == "adapted":
            query["target"] = self._adapted_query_targets(batch, support["target"], mask)
        return support, query

    def _adapted_query_targets(self, batch: dict, support_target: Tensor, mask: Tensor | None) -> Tensor:
        """The query's TD targets from theta_i^-: theta^- after the K inner steps on task i's support, fitting the
        support's own targets (from theta^-, as the frozen init's at meta-test). Nothing flows back, and theta^-
        itself is not changed."""
        with torch.no_grad():
            params = dict(self.target_net.named_parameters())
            split = split_for_adaptation(self.target_net, params, self.adapt)
            support = {"x": split.encode(batch["support"]["obs"]), "actions": batch["support"]["actions"],
                       "target": support_target}
            support |= self._solver_fields(split, batch["support"], support["x"], mask)  # on theta^-'s features
            adapted = self.inner.adapted_no_grad(split.q_fn, split.fast, support)
            online = None
            if self.hparams.double_dqn:  # a' from theta_i (theta after the same K steps), its value from theta_i^-
                own = {k: v.detach() for k, v in self.net.named_parameters()}
                own_split = split_for_adaptation(self.net, own, self.adapt)
                own_adapted = self.inner.adapted_no_grad(
                    own_split.q_fn, own_split.fast, {**support, "x": own_split.encode(batch["support"]["obs"])})
                online = lambda obs: batched_q(self.net, own, own_adapted, obs)  # noqa: E731
            return self._td_targets(batch["query"], lambda obs: batched_q(self.target_net, params, adapted, obs),
                                    mask, online)

    def meta_objective(self, batch: dict, with_pre: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
        """The objective to backpropagate and, per task, the query TD loss before (only `with_pre`: it costs
        a pass) and after adaptation. MAML family: L_M(theta). Multitask: the TD loss on all of the batch.
        Reptile: a surrogate whose gradient is theta - mean(adapted theta)."""
        split = split_for_adaptation(self.net, dict(self.net.named_parameters()), self.adapt,
                                     fast_body=self.inner.written_out)
        support, query = self._support_and_query(split, batch)
        if self.algorithm == "multitask":
            joined = {k: torch.cat([support[k], query[k]], dim=1) for k in support}
            per_task = self.inner.losses_before(split.q_fn, split.fast, joined)
            return per_task.mean(), per_task.detach(), per_task.detach()
        if self.algorithm == "reptile":
            return self._reptile_objective(split, support, query)
        post = self.inner.meta_losses(split.q_fn, split.fast, support, query, split.batched_q_fn)
        reduce = torch.sum if self.hparams.meta_reduction == "sum" else torch.mean
        meta_loss, pre, weight = reduce(post), None, self.hparams.pre_loss_weight
        if weight > 0 or with_pre:
            with contextlib.nullcontext() if weight > 0 else torch.no_grad():  # a weighted loss keeps its graph
                pre = self.inner.losses_before(split.q_fn, split.fast, query)
            if weight > 0:
                meta_loss = meta_loss + weight * reduce(pre)
            pre = pre.detach()
        return meta_loss, pre, post.detach()

    def _reptile_objective(self, split: AdaptSplit, support: dict, query: dict) -> tuple[Tensor, Tensor, Tensor]:
        fixed = {k: v.detach() for k, v in split.fast.items()}
        with torch.no_grad():
            adapted = self.inner.adapted(split.q_fn, fixed, support)
            toward = {k: v.mean(dim=0) for k, v in adapted.items()}
            pre = self.inner.losses_before(split.q_fn, fixed, query)
            post = torch.func.vmap(lambda f, q: self.inner.loss_of(split.q_fn, f, q))(adapted, query)
        surrogate = sum((w * (w.detach() - toward[k])).sum() for k, w in split.fast.items())
        return surrogate, pre, post

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        opt = self.optimizers()
        logging_step = self._logs_at(self.global_step + 1)  # global_step counts this step once opt.step() ran
        with self._weight_noise():
            meta_loss, pre, post = self.meta_objective(batch, with_pre=logging_step)
            self._stop_if_diverged(meta_loss, "meta-loss")
            opt.zero_grad()
            self.manual_backward(meta_loss)
        grad_norm = self._grad_norm() if logging_step else None
        if self.hparams.grad_clip > 0:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        for group in opt.param_groups:
            group["lr"] = self.meta_lr_at(self.global_step)
        opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        self._stop_if_diverged(torch.stack([p.detach().isfinite().all() for p in self.net.parameters()]).all(),
                               "parameters after the meta-update")
        self._log_step(batch, meta_loss, pre, post, grad_norm)
        return meta_loss.detach()

    @torch.no_grad()
    def _grad_norm(self) -> Tensor:
        """The meta-gradient's 2-norm before clipping (what grad_clip compares against)."""
        return _global_norm([p.grad for p in self.parameters() if p.grad is not None])

    @torch.no_grad()
    def diagnostics(self, batch: dict) -> dict[str, Tensor]:
        """What a DQN's divergence shows first, at logging steps only: theta's Q-values of the query's own
        actions (their mean and largest magnitude: bootstrapped values that grow without bound) and theta's
        2-norm (weights that keep growing)."""
        obs, actions = batch["query"]["obs"], batch["query"]["actions"]
        q = self.net(obs).gather(-1, actions.long().unsqueeze(-1))
        return {"train/q_taken": q.mean(), "train/q_taken_absmax": q.abs().max(),
                "train/theta_norm": _global_norm(list(self.net.parameters()))}

    @contextlib.contextmanager
    def _weight_noise(self):
        """theta + noise for the meta-gradient's forward and backward (model.weight_noise), then theta exactly."""
        sigma = self.hparams.get("weight_noise", 0.0)
        if not sigma:
            yield
            return
        params = list(self.net.parameters())
        saved = [p.detach().clone() for p in params]
        noise = relative_noise(saved, sigma, step_seed(self._run_seed, self.global_step))
        with torch.no_grad():
            for p, n in zip(params, noise):
                p.add_(n)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)

    def _stop_if_diverged(self, value: Tensor, what: str) -> None:
        """NaN/Inf stops the run with the step named; checkpoints already written are untouched."""
        ok = value.all() if value.dtype == torch.bool else torch.isfinite(value)
        if not bool(ok):
            shown = "not finite" if value.dtype == torch.bool else f"{value.item()}"
            raise FloatingPointError(f"{what} {shown} at meta-step {self.global_step}; stopped. The last good "
                                     f"checkpoint is {self.trainer.default_root_dir}/checkpoints/last.ckpt")

    def _logs_at(self, step: int) -> bool:
        every = self.trainer.log_every_n_steps
        return every > 0 and step % every == 0

    def _log_step(self, batch: dict, meta_loss: Tensor, pre: Tensor | None, post: Tensor,
                  grad_norm: Tensor | None = None) -> None:
        """Log every log_every_n_steps meta-steps only: Lightning writes no more often, and a self.log call
        costs about as much as a tenth of a meta-step. Rates are averaged over the steps since the last log."""
        self.episode_return.update(batch["episode_returns"])  # empty where no episode ended: every rank counts it
        self._env_steps_since_log += int(batch["env_steps"])
        if not self._logs_at(self.global_step):
            return
        every = self.trainer.log_every_n_steps
        now = time.perf_counter()
        logs = {
            "train/meta_loss": post.mean() if self.algorithm == "reptile" else meta_loss.detach(),
            "train/query_loss_pre": pre.mean(),
            "train/query_loss_post": post.mean(),
            "train/epsilon": self.epsilon(),
            "train/grad_norm": grad_norm,
            **self.diagnostics(batch),
        }
        if self._last_log_time is not None:
            dt = now - self._last_log_time
            logs["perf/meta_steps_per_s"] = every / dt
            logs["perf/env_steps_per_s"] = self._env_steps_since_log / dt
        self._last_log_time, self._env_steps_since_log = now, 0
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=1)
        self.log("meta_loss", logs["train/meta_loss"], prog_bar=True, logger=False, batch_size=1)
        # compute() syncs over DDP ranks (a collective): every rank calls it, also one whose tasks finished no
        # episode since the last log; NaN (no episode on any rank) is not logged
        episode_return = self.episode_return.compute()
        self.episode_return.reset()
        if not episode_return.isnan():
            self.log("train/episode_return", episode_return, on_step=True, prog_bar=True, batch_size=1)

    # ---- meta-test: the protocol and the report live in callbacks.AdaptationReport --------------------------
    def test_step(self, batch, batch_idx: int) -> None:
        """Nothing per batch: AdaptationReport runs the whole protocol once, at the end of the test epoch."""

    def configure_callbacks(self) -> list[pl.Callback]:
        return [AdaptationReport()]


def _global_norm(tensors: list[Tensor]) -> Tensor:
    """The 2-norm of tensors taken as one vector (gradient clipping's total norm)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))

"""Callbacks: the target network's sync, and meta-test evaluation on validation tasks during fit."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from mamldqn_pl.errors import ConfigError, require
from mamldqn_pl.evaluation import Protocol, eval_budgets, evaluate_shared
from mamldqn_pl.report import format_table, summarize, write_report
from mamldqn_pl.schedules import cosine


def evaluate(pl_module: pl.LightningModule, tasks: list, protocol: Protocol, scratch: bool = False) -> list[dict]:
    """The protocol for the module's initialisation (its EMA when it keeps one), with its own inner update."""
    family = pl_module.trainer.datamodule.family
    return evaluate_shared(pl_module.init_net, family, tasks, pl_module.adapt, pl_module.inner,
                           pl_module.hparams.gamma, protocol, scratch)


class TargetNetworkSync(pl.Callback):
    """Moves theta^- toward theta after each meta-step: Polyak averaging with `tau` > 0, else a hard copy
    every `every_n_steps` meta-steps. theta^- never receives gradients; this is the only place it changes.

    With `tau_final` the rate follows a cosine from `tau` down to `tau_final` at `tau_horizon` meta-steps
    (default trainer.max_steps): a fast-moving target early, a slow one late. A slow target makes the
    validation return smooth but learning slow (docs/results/stability_screen.md); the schedule is a function of
    the step alone, so a resumed run follows the same curve.

    With `best_after` the sync runs as above until that meta-step; from then on theta^- is a hard copy of the best
    initialisation validated so far (`meta_val`'s return at its monitored K, validation tasks only, checks before
    `best_after` included), fixed between new bests. Why: which value function a run bootstraps from decides most
    of its seed's result (docs/experiments.md, tenth session), and theta's values drift with theta, while a fixed
    good one does not (benchmarks/teacher_targets.py); 0 holds theta^- at the best from the start.
    """

    def __init__(self, tau: float = 0.005, every_n_steps: int = 0, tau_final: float | None = None,
                 tau_horizon: int | None = None, best_after: int | None = None) -> None:
        require(0.0 <= tau <= 1.0, f"target_sync.tau: {tau} must lie in [0, 1]")
        require(every_n_steps >= 0, f"target_sync.every_n_steps: {every_n_steps} must be >= 0")
        require((tau > 0) != (every_n_steps > 0),
                f"target_sync: set exactly one of tau ({tau}) > 0 or every_n_steps ({every_n_steps}) > 0")
        require(best_after is None or best_after >= 0, f"target_sync.best_after: {best_after} must be >= 0")
        require(tau_final is None or (tau > 0 and 0.0 < tau_final <= tau),
                f"target_sync.tau_final: {tau_final} must lie in (0, tau = {tau}] (and needs tau > 0)")
        require(tau_horizon is None or tau_horizon >= 1, f"target_sync.tau_horizon: {tau_horizon} must be >= 1")
        self.best_after = best_after
        self.best: float | None = None  # best_after: the best validated return and its theta, theta at the newest
        self.best_params: dict[str, torch.Tensor] | None = None  # check, and how many of meta_val's checks were read
        self.checked: dict[str, torch.Tensor] | None = None
        self.seen = 0
        self.validation: MetaTestEvaluation | None = None  # best_after: meta_val and the return it monitors
        self.key = ""
        self.tau = tau
        self.every_n_steps = every_n_steps
        self.tau_final = tau_final
        self.tau_horizon = tau_horizon
        self.syncs = 0

    def tau_at(self, step: int, max_steps: int) -> float:
        """The Polyak rate after meta-step `step` (1-based: the sync that follows it)."""
        if self.tau_final is None:
            return self.tau
        horizon = self.tau_horizon or max_steps
        require(horizon > 0, "target_sync.tau_final needs trainer.max_steps or target_sync.tau_horizon")
        return cosine(self.tau, self.tau_final, step, horizon)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.best_after is not None and stage == "fit":
            self.validation = next((c for c in trainer.callbacks if isinstance(c, MetaTestEvaluation)), None)
            require(self.validation is not None, "target_sync.best_after needs the meta_val validation")
            self.key = f"meta_val/return_k{self.validation.monitored_k(pl_module.hparams.inner_steps)}"

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.best_after is not None:
            self._track_best(trainer, pl_module)
            if trainer.global_step > self.best_after:
                return
        online, target = pl_module.net.parameters(), pl_module.target_net.parameters()
        if self.tau > 0:
            tau = self.tau_at(trainer.global_step, trainer.max_steps)
            for t, p in zip(target, online):
                t.lerp_(p, tau)
        elif trainer.global_step % self.every_n_steps == 0:
            for t, p in zip(target, online):
                t.copy_(p)
        else:
            return
        self.syncs += 1

    def _track_best(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Runs before meta_val in each step: a check of the previous step that beat the best keeps theta as it was
        validated (held here since that step); past `best_after` theta^- is that best, copied when it changes.
        Then theta is held if this step will be validated."""
        validation, new_best = self.validation, False
        for result in validation.history[self.seen:]:
            if self.checked is not None and (self.best is None or result[self.key] > self.best):
                self.best, self.best_params, new_best = result[self.key], self.checked, True
        self.seen = len(validation.history)
        step = trainer.global_step
        if self.best_params is not None and step > self.best_after and (new_best or step == self.best_after + 1):
            for name, t in pl_module.target_net.named_parameters():
                t.copy_(self.best_params[name])
            self.syncs += 1
        if step % validation.every_n_steps == 0 or step == trainer.max_steps:
            self.checked = {k: v.detach().clone() for k, v in pl_module.init_net.named_parameters()}

    def state_dict(self) -> dict[str, Any]:
        state = {"syncs": self.syncs}
        if self.best_after is not None:
            state.update(best=self.best, best_params=self.best_params, seen=self.seen, checked=self.checked)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.syncs = state_dict["syncs"]
        if self.best_after is not None:
            self.best, self.best_params = state_dict["best"], state_dict["best_params"]
            self.seen, self.checked = state_dict["seen"], state_dict["checked"]


class MetaTestEvaluation(pl.Callback):
    """Runs the meta-test protocol on the validation tasks every `every_n_steps` meta-steps and at the last
    step, logging meta_val/return_k{K}; ModelCheckpoint keeps the best init by the return at `monitor_k`.

    `ks` always include 0, the trained K and `monitor_k`: the K whose validation return picks the best checkpoint
    (default the trained K; the K a user will adapt with at meta-test, when it is another). Never touches the test
    tasks.
    """

    def __init__(self, every_n_steps: int = 500, ks: list[int] | None = None, episodes: int = 5,
                 seeds: list[int] | None = None, monitor_k: int | None = None) -> None:
        require(every_n_steps >= 1, f"meta_val.every_n_steps: {every_n_steps} must be >= 1")
        require(episodes >= 1, f"meta_val.episodes: {episodes} must be >= 1")
        require(monitor_k is None or monitor_k >= 0, f"meta_val.monitor_k: {monitor_k} must be >= 0")
        self.every_n_steps = every_n_steps
        self.ks = ks
        self.monitor_k = monitor_k
        self.episodes = episodes
        self.seeds = [0, 1, 2] if seeds is None else seeds
        self.history: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every_n_steps and step != trainer.max_steps:
            return
        ks = sorted({0, self.monitored_k(pl_module.hparams.inner_steps), pl_module.hparams.inner_steps,
                     *(self.ks or [])})
        protocol = Protocol.of(trainer.datamodule.hparams, ks, self.episodes, self.seeds)
        rows = evaluate(pl_module, trainer.datamodule.val_tasks, protocol)
        result = {"step": step}
        for k in ks:
            values = [r["return"] for r in rows if r["k"] == k]
            result[f"meta_val/return_k{k}"] = sum(values) / len(values)
        self.history.append(result)
        metrics = {k: v for k, v in result.items() if k != "step"}
        # to ModelCheckpoint and the progress bar via log_dict; to the loggers directly, whatever log_every_n_steps
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=True, logger=False, batch_size=1)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def monitored_k(self, trained_k: int) -> int:
        """The K whose validation return ModelCheckpoint monitors."""
        return trained_k if self.monitor_k is None else self.monitor_k

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])


class AdaptationReport(pl.Callback):
    """`mamldqn test`: the meta-test protocol on the held-out test tasks for the initialisation and scratch, at
    every budget, logged as meta_test/return_k{K} and written as adaptation.{csv,json,md,png} in the run folder.
    The module declares it (configure_callbacks), so trainer.test(model) writes the report from Python too."""

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        hp = pl_module.hparams
        dm = trainer.datamodule
        if dm is None:
            raise ConfigError("mamldqn test needs the data module (data: in the config)")
        ks, seeds = pl_module.test_ks, pl_module.test_seeds
        budgets = eval_budgets(dm.hparams.adapt_budget, hp.test_budgets)
        rows: list[dict] = []
        for budget in budgets:
            rows += evaluate(pl_module, dm.test_tasks, Protocol.of(dm.hparams, ks, hp.test_episodes, seeds, budget),
                             scratch=True)
        main, k = dm.hparams.adapt_budget, hp.inner_steps
        protocol = Protocol.of(dm.hparams, ks, hp.test_episodes, seeds)
        meta = {"ckpt_path": trainer.ckpt_path, "protocol": protocol.__dict__, "budgets": budgets,
                "model": dict(hp), "data": dict(dm.hparams), "n_tasks": len(dm.test_tasks)}
        summary = summarize(rows)
        for s in summary:
            if s["init"] == "meta-init" and s["group"] == "all" and s["budget"] == main:
                pl_module.log(f"meta_test/return_k{s['k']}", s["mean"], batch_size=1)
        if not trainer.is_global_zero:
            return
        write_report(rows, summary, trainer.default_root_dir, meta, budget=main, k=k)
        shown = [s for s in summary if s["budget"] == main or (s["k"] == k and s["group"] == "all")]
        pl_module.print(f"\nAdaptation on {len(dm.test_tasks)} held-out tasks x {len(seeds)} seeds (support: "
                        f"{main} env steps at epsilon {dm.hparams.epsilon_adapt}; at K = {k} also other budgets):\n")
        pl_module.print(format_table(shown))
        pl_module.print(f"\nwrote adaptation.csv/.json/.md/.png (all budgets) to {trainer.default_root_dir}")

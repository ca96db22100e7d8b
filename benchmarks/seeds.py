"""Issue 10 from nothing: does meta-training give the same result whatever the training seed and the checkpoint?

    .venv/bin/python benchmarks/seeds.py              # configs/cartpole.yaml, training seeds 0-4
    .venv/bin/python benchmarks/seeds.py --config configs/cartpole_init_support.yaml --runs lightning_logs/seeds_v7
                                                      # the same for the default up to the tenth session
    .venv/bin/python benchmarks/seeds.py --ablation   # each mechanism on and off (ABLATION), 3 seeds each
    .venv/bin/python benchmarks/seeds.py --ablation --seeds 0 1 --name candidates --variants \
        plus_ema_cosine_warm_start_support plus_ema_cosine_metasgd_head plus_ema_cosine_meta_lr_3e-4

For every run: `mamldqn fit`, then the meta-test protocol (20 held-out tasks x 3 evaluation seeds, 200 new-task env
steps, K in 0, 1, 3, 5) on its best-validation and its last checkpoint, and the spread of the validation return at
K over the final third of training, and the last checkpoint's validation return at every K up to 8. Two K are
shown: the trained K (3), and K = 5, fixed in the second session on the validation tasks, the K the issue's targets
are read at and (since the fifth session, meta_val.monitor_k) the one that picks best.ckpt. Nothing is chosen on
test tasks. Writes docs/results/NAME.{csv,md,png} and NAME_val_k.csv; the README's tables between the
`<!-- NAME.md -->` markers are replaced by NAME.md. Runs go to lightning_logs/seeds/<variant>_s<seed>; finished
runs and evaluations are reused, so an interrupted benchmark continues where it stopped; a run folder made with
other settings (the default config before the eleventh session, say) is refused, not reused.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from runs import ROOT, readme_table, train

from mamldqn_pl.compare import load
from mamldqn_pl.evaluation import Protocol, evaluate_init
from mamldqn_pl.report import summarize, write_csv

K = 3  # the trained K of configs/cartpole.yaml, fixed before any result was seen
K_ALSO = 5  # fixed on validation tasks in the second session (adaptation alternates between odd and even K)
KS = (0, 1, 3, 5)
CONFIG = ROOT / "configs/cartpole.yaml"  # the default mode's config
# The ablation variants are settings that differ from the default up to the tenth session, kept as this file, so
# that every table they wrote still reproduces now that configs/cartpole.yaml is the tenth session's variant
# (`apt_cosine_eps_adapt_1.0_6k_best_after_4000` below, bitwise).
ABLATION_CONFIG = ROOT / "configs/cartpole_init_support.yaml"
# The default config up to the third session: each meta-step's random half of tasks collects with adapted
# policies. configs/cartpole.yaml now has collect_adapted_per task (fourth session); the variants measured before
# it keep their meaning (and their cached runs) by naming the old setting.
PREVIOUS = {"data.collect_adapted_per": "meta_step"}
EMA_COSINE = {**PREVIOUS, "model.ema_decay": "0.998", "model.meta_lr_schedule": "cosine"}
PER_TASK = {"data.collect_adapted_per": "task"}  # the fourth session's mechanism, named so it holds either way
APT_COSINE = {**PER_TASK, "model.meta_lr_schedule": "cosine"}  # = ABLATION_CONFIG since then
RANDOM_6K = {**APT_COSINE, "data.epsilon_adapt": "1.0", "trainer.max_steps": "6000"}  # the ninth session's candidate
ABLATION = {  # variant -> settings that differ from ABLATION_CONFIG
    "default": PREVIOUS,
    "no_adapted_collection": {**PREVIOUS, "data.collect_adapted": "0"},  # the settings before issue 10
    "plus_ema": {**PREVIOUS, "model.ema_decay": "0.998"},
    "plus_cosine": {**PREVIOUS, "model.meta_lr_schedule": "cosine"},
    "plus_ema_cosine": EMA_COSINE,
    "ema_cosine_no_adapted": {**EMA_COSINE, "data.collect_adapted": "0"},
    "plus_ema_cosine_multi_step": {**EMA_COSINE, "model.multi_step_loss": "true"},
    # candidates tried on top of plus_ema_cosine, rejected on the validation tasks after 2 seeds
    "plus_ema_cosine_warm_start_support": {**EMA_COSINE, "data.support_from": "warm_start",
                                           "data.support_size": "200", "data.learning_starts": "328"},
    "plus_ema_cosine_metasgd_head": {**EMA_COSINE, "model.algorithm": "metasgd", "model.adapt": "head"},
    "plus_ema_cosine_meta_lr_3e-4": {**EMA_COSINE, "model.meta_lr": "0.0003"},
    # against the odd/even alternation of K: a smaller inner step on top of the default
    "inner_lr_0.02": {**PREVIOUS, "model.inner_lr": "0.02"},
    "inner_steps_5": {**PREVIOUS, "model.inner_steps": "5"},
    # third session: DQN-side knobs against the late wandering, screened on 2 seeds (--name stability_screen)
    "tau_0.001": {**PREVIOUS, "target_sync.tau": "0.001"},
    "tau_0.002": {**PREVIOUS, "target_sync.tau": "0.002"},
    "grad_clip_1": {**PREVIOUS, "model.grad_clip": "1"},
    "grad_clip_1_cosine": {**PREVIOUS, "model.grad_clip": "1", "model.meta_lr_schedule": "cosine"},
    "long_task_life": {**PREVIOUS, "data.retire_after": "8000", "data.buffer_capacity": "8000"},
    "short_task_life": {**PREVIOUS, "data.retire_after": "1000", "data.buffer_capacity": "1000"},
    "tasks_64": {**PREVIOUS, "data.tasks_per_batch": "64"},  # every pool task each meta-step: less meta-grad noise
    # ... and on top of data.retire_every 100 (the speed setting that was tried as the default, then taken off)
    "retire_every_100": {**PREVIOUS, "data.retire_every": "100"},
    "retire_every_100_batch_256": {**PREVIOUS, "data.retire_every": "100", "data.support_size": "256",
                                   "data.query_size": "256", "data.learning_starts": "512"},
    "retire_every_100_tasks_64": {**PREVIOUS, "data.retire_every": "100", "data.tasks_per_batch": "64"},
    "retire_every_100_tau_cosine_0.001": {**PREVIOUS, "data.retire_every": "100", "target_sync.tau_final": "0.001"},
    # fourth session: n-step TD targets (reward reaches the values n times faster per bootstrap), and with them
    # a slower target network (smooth with tau 0.001 above, but slow without n-step)
    "n_step_3": {**PREVIOUS, "data.n_step": "3"},
    "n_step_3_tau_0.002": {**PREVIOUS, "data.n_step": "3", "target_sync.tau": "0.002"},
    # half of the pool's slots always collect with their adapted policy (their episodes run long, as at
    # meta-test), instead of a random half of each meta-step's tasks (a task's episode then switches policies)
    "adapted_per_task": PER_TASK,
    # on top of it (the default since then): now that the curves are smooth, does a settling schedule or an
    # average of theta make the last checkpoint as good as the best?
    "apt_cosine": APT_COSINE,
    "apt_ema": {**PER_TASK, "model.ema_decay": "0.998"},
    "apt_cosine_ema": {**APT_COSINE, "model.ema_decay": "0.998"},
    # the new default trained for 20,000 meta-steps (the cosine follows max_steps): within `make run`'s 10 minutes
    "apt_cosine_20k": {**APT_COSINE, "trainer.max_steps": "20000"},
    # ... and the target network's rate falling with it, from 0.005 to 0.001 (a cosine over max_steps)
    "apt_cosine_tau": {**APT_COSINE, "target_sync.tau_final": "0.001"},
    # fifth session, against the weakest seeds' late dips (screened on seeds 2 and 4, the lowest on validation):
    # three quarters of the pool's slots act with their adapted policy; a larger meta-lr peak before the cosine
    "apt_cosine_adapted_0.75": {**APT_COSINE, "data.collect_adapted": "0.75"},
    "apt_cosine_meta_lr_0.002": {**APT_COSINE, "model.meta_lr": "0.002"},
    "apt_cosine_double_dqn": {**APT_COSINE, "model.double_dqn": "true"},  # theta picks a', theta^- values it
    "apt_cosine_layer_norm": {**APT_COSINE, "model.layer_norm": "true"},  # features of fixed scale (sixth session)
    # sixth session: a shorter run, the cosine over fewer meta-steps (it follows max_steps)
    "apt_cosine_8k": {**APT_COSINE, "trainer.max_steps": "8000"},
    # ... and twice the query rows per task (the "larger query batches": less meta-gradient noise)
    "apt_cosine_query_256": {**APT_COSINE, "data.query_size": "256", "data.learning_starts": "384"},  # 128 + 256 first
    # seventh session: CartPole DQN's known late collapse (a good policy's data narrows to upright states): keep
    # theta's own collection exploring at the meta-test support's rate (epsilon_adapt 0.25) instead of 0.05
    "apt_cosine_eps_0.25": {**APT_COSINE, "model.epsilon_end": "0.25"},
    # ... and theta's own query TD loss in the meta-objective (weight 0.1): the frozen init computes the meta-test
    # support's TD targets, and its own values drift from accurate over training (query_loss_pre rises ~0.9)
    "apt_cosine_pre_0.1": {**APT_COSINE, "model.pre_loss_weight": "0.1"},
    # is a collapse the init's or the task stream's? Same seed_everything (the same initial weights), another
    # stream of training tasks, collection and env draws (data.train_seed; validation and test tasks unchanged)
    "apt_cosine_stream_3": {**APT_COSINE, "data.train_seed": "3"},
    "apt_cosine_stream_4": {**APT_COSINE, "data.train_seed": "4"},
    # issue 13: the data side in a second process; each batch collected with the weights one meta-step old
    "apt_cosine_process": {**APT_COSINE, "data.collection": "process"},
    # eighth session: a run's fate is drawn by its training stream, so average the meta-gradient over more of it:
    # every pool task in every meta-step (64, not 32), half the meta-gradient's task noise at about twice the cost
    "apt_cosine_tasks_64": {**APT_COSINE, "data.tasks_per_batch": "64"},
    # ... or let theta drift half as fast (0.002 collapsed seed 2 in the fifth session's screen)
    "apt_cosine_meta_lr_0.0005": {**APT_COSINE, "model.meta_lr": "0.0005"},
    # ... or bootstrap the query targets from theta_i^-, theta^- adapted on the task's support (the seed's
    # task-specific target network) instead of the shared theta^-, whose own TD error rises over training
    "apt_cosine_query_adapted": {**APT_COSINE, "model.query_target": "adapted"},
    # ... or a head step that cannot overshoot: lr x mean |features|^2 is 3.1-3.5 at 0.05 (seventh session), above
    # gradient descent's limit of 2, so adaptation alternates between odd and even K; 0.03 brings it near 2
    "apt_cosine_inner_lr_0.03": {**APT_COSINE, "model.inner_lr": "0.03"},
    # ... or a faster target network (slower ones, 0.001-0.002, learned far slower in the third session)
    "apt_cosine_tau_0.01": {**APT_COSINE, "target_sync.tau": "0.01"},
    # ... MAML++'s multi-step loss (query loss after every inner step; second session: only on an older default)
    "apt_cosine_multi_step": {**APT_COSINE, "model.multi_step_loss": "true"},
    # ... a quarter of the slots acting with their adapted policy (three quarters validated lower, fifth session)
    "apt_cosine_adapted_0.25": {**APT_COSINE, "data.collect_adapted": "0.25"},
    # ... a shorter horizon (CartPole's values about 50 instead of 100: smaller bootstrapped errors)
    "apt_cosine_gamma_0.98": {**APT_COSINE, "model.gamma": "0.98"},
    # ... the faster target network (steady on some seeds, collapsing on others) with Double DQN targets, against
    # the overestimation a faster-moving bootstrap can feed
    "apt_cosine_tau_0.01_double_dqn": {**APT_COSINE, "target_sync.tau": "0.01", "model.double_dqn": "true"},
    # ninth session, against the swing: Adam's epsilon at DQN practice (small-gradient parameters stop random-walking
    # at meta_lr per step; 1e-4 is about a fifth of the hidden layer's median sqrt(v) in apt_cosine_s5's last.ckpt),
    # and advantage learning at the paper's alpha (wider action gaps: a greedy policy robust to small moves of theta)
    "apt_cosine_adam_eps_1e-4": {**APT_COSINE, "model.adam_eps": "1e-4"},
    "apt_cosine_al_0.9": {**APT_COSINE, "model.advantage_learning": "0.9"},
    # ... and random weight perturbation: each meta-gradient at theta + 2% relative noise (val_noise.py --relative:
    # the validation return decorrelates over random moves of about 3%), for an init whose adaptation survives
    # the moves late training still makes
    "apt_cosine_weight_noise_0.02": {**APT_COSINE, "model.weight_noise": "0.02"},
    # ... and the support played uniformly at random (data.epsilon_adapt 1.0, in training's warm starts, validation
    # and meta-test alike): the support no longer depends on theta, the half of the return's roughness that
    # val_noise.py --fixed-support attributes to the support's collection
    "apt_cosine_eps_adapt_1.0": {**APT_COSINE, "data.epsilon_adapt": "1.0"},
    # ... which is above 400 by step 2,000: the same trained for 6,000 meta-steps (the cosine follows max_steps)
    "apt_cosine_eps_adapt_1.0_6k": RANDOM_6K,
    # ... with half the meta-learning rate: its collapses come at steps 3,500-5,000, with the rate still at half to
    # a tenth of its peak
    "apt_cosine_eps_adapt_1.0_6k_meta_lr_0.0005": {**RANDOM_6K, "model.meta_lr": "0.0005"},
    # ... trained only as long as its runs climb: every seed is above 400 by step 2,000 and the collapses start
    # after 3,500, so a cosine that reaches zero at 3,000 or 4,000 steps settles theta before the drift (checks
    # every 250 steps, so that the final third still holds four to six of them)
    "apt_cosine_eps_adapt_1.0_3k": {**RANDOM_6K, "trainer.max_steps": "3000", "meta_val.every_n_steps": "250"},
    "apt_cosine_eps_adapt_1.0_4k": {**RANDOM_6K, "trainer.max_steps": "4000", "meta_val.every_n_steps": "250"},
    # ... whose every failure on the validation tasks is the cart leaving the track with the pole up (tenth
    # session): the query targets from theta^-, which does not know the flip, carry a value of about 14 steps, too
    # short for the position. With the task-aware targets of the seed article (theta_i^-, eighth session), which
    # diverged with the init's own support
    "apt_cosine_eps_adapt_1.0_6k_query_adapted": {**RANDOM_6K, "model.query_target": "adapted"},
    # ... which overestimates (theta's values pass 100, the most a CartPole state is worth at gamma 0.99): with
    # Double DQN, a' from theta_i (theta after the same K steps) and its value from theta_i^-
    "apt_cosine_eps_adapt_1.0_6k_query_adapted_ddqn": {**RANDOM_6K, "model.query_target": "adapted",
                                                       "model.double_dqn": "true"},
    # ... more of the pool's slots collecting with adapted policies: their long episodes hold the transitions that
    # end with the cart off the track, the only place where the query's targets say that the edge is bad
    "apt_cosine_eps_adapt_1.0_6k_adapted_0.75": {**RANDOM_6K, "data.collect_adapted": "0.75"},
    # ... 3-step returns: the edge's terminal reaches three times farther back per bootstrap, and in the adapted
    # slots' data the rewards are those of a policy that knows the task
    "apt_cosine_eps_adapt_1.0_6k_n_step_3": {**RANDOM_6K, "data.n_step": "3"},
    # ... the adapted slots' queries with the rewards of 50 or 100 steps of their own episodes (data.query_n_step):
    # targets that reach the track's edge, where theta^-'s one-step values are a dozen steps long
    "apt_cosine_eps_adapt_1.0_6k_query_n_50": {**RANDOM_6K, "data.query_n_step": "50"},
    "apt_cosine_eps_adapt_1.0_6k_query_n_100": {**RANDOM_6K, "data.query_n_step": "100"},
    # ... and shorter windows (50 put a position sense into theta's values, V 38 at the centre against 12-14 at the
    # edges, but the adapted policies dropped the pole more often)
    "apt_cosine_eps_adapt_1.0_6k_query_n_10": {**RANDOM_6K, "data.query_n_step": "10"},
    "apt_cosine_eps_adapt_1.0_6k_query_n_20": {**RANDOM_6K, "data.query_n_step": "20"},
    # ... with theta^- a hard copy of the best initialisation validated so far, fixed between new bests
    # (target_sync.best_after): benchmarks/teacher_targets.py showed that a fixed good value function as the target
    # network gives every seed a good init. From the start (0; run as target_sync.to_best, the same rule, before
    # the key took its final form), or after the usual Polyak target for the first half
    "apt_cosine_eps_adapt_1.0_6k_best_after_0": {**RANDOM_6K, "target_sync.best_after": "0"},
    "apt_cosine_eps_adapt_1.0_6k_best_after_3000": {**RANDOM_6K, "target_sync.best_after": "3000"},
    # ... or after two thirds: its two poor seeds' best checks before step 3,000 were 368 and 428
    "apt_cosine_eps_adapt_1.0_6k_best_after_4000": {**RANDOM_6K, "target_sync.best_after": "4000"},
    # ... and trained a third longer with the switch at the same two thirds: the default's two poor seeds of fifteen
    # (9, 13) had no good teacher by step 4,000 (eleventh session's probe: 487 and 317 against 362 and 215)
    "apt_cosine_eps_adapt_1.0_8k_best_after_5333": {**RANDOM_6K, "trainer.max_steps": "8000",
                                                    "target_sync.best_after": "5333"},
    # ... and the new default with its data side in a second process (issue 13): each batch collected with theta one
    # meta-step old; screened before the default changed with the old one (378 against 409 on fifteen seeds)
    "apt_cosine_eps_adapt_1.0_6k_best_after_4000_process": {**RANDOM_6K, "target_sync.best_after": "4000",
                                                            "data.collection": "process"},
    # ... and the new default with the ridge inner solver of the fourteenth session (exact least-squares head steps)
    # and the per-task query targets that nav2d's working variant needed with it
    "apt_cosine_eps_adapt_1.0_6k_best_after_4000_ridge_qta": {**RANDOM_6K, "target_sync.best_after": "4000",
                                                              "model.inner_solver": "ridge",
                                                              "model.query_target": "adapted"},
    # ... and the default config (12,000 steps, the init's own support) with the best after its first half
    "apt_cosine_best_after_6000": {**APT_COSINE, "target_sync.best_after": "6000"},
    # ... and a support half random, half the init's greedy play (epsilon_adapt 0.5)
    "apt_cosine_eps_adapt_0.5_6k": {**APT_COSINE, "data.epsilon_adapt": "0.5", "trainer.max_steps": "6000"},
    # ... and with the steadier target of the ninth session's fifteen seeds (tau 0.01, Double DQN)
    "apt_cosine_eps_adapt_1.0_tau_0.01_double_dqn": {**APT_COSINE, "data.epsilon_adapt": "1.0",
                                                     "target_sync.tau": "0.01", "model.double_dqn": "true"},
    # ... and the support drawn as at meta-test: each task's first 200 transitions, the init's epsilon_adapt play
    # when the task entered the pool, while the query comes from the rest (the adapted policy's visits, in the
    # adapted slots), as MAML's RL setting has pre- and post-update data
    "apt_cosine_warm_start_support": {**APT_COSINE, "data.support_from": "warm_start", "data.support_size": "200",
                                      "data.learning_starts": "328"},
}
SCREEN = ("default", "tau_0.001", "tau_0.002", "grad_clip_1", "grad_clip_1_cosine", "long_task_life",
          "short_task_life", "retire_every_100", "retire_every_100_batch_256", "retire_every_100_tasks_64",
          "retire_every_100_tau_cosine_0.001")
COLUMNS = ("variant", "seed", "checkpoint", "ckpt_step", "k", "n", "mean", "iqm", "ci_low", "ci_high", "flip_mean",
           "val_k", "val_std_last_third", "val_mean_last_third", "fit_s", "meta_steps_per_s")


def validation_curves(run: Path) -> dict[int, list[tuple[int, float]]]:
    """The validation return against the step, for every K the run validated at."""
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    prefix = "meta_val/return_k"
    ks = sorted(int(key[len(prefix):]) for key in rows[0] if key.startswith(prefix))
    return {k: [(int(r["step"]), float(r[f"{prefix}{k}"])) for r in rows if r.get(f"{prefix}{k}")] for k in ks}


def curve_at(r: dict, k: int) -> tuple[int, list[tuple[int, float]]]:
    """The validation curve at K = k where the run validated at k (runs before the fifth session validated only at
    0 and the trained K), else at the trained K: (the K it is at, the curve)."""
    at = k if k in r["curves"] else K if K in r["curves"] else max(r["curves"])
    return at, r["curves"][at]


def step_rate(run: Path) -> float:
    """Median logged meta-steps/s of the run (robust to a resume, unlike its wall time)."""
    with open(run / "metrics.csv") as f:
        return float(np.median([float(r["perf/meta_steps_per_s"]) for r in csv.DictReader(f)
                                if r.get("perf/meta_steps_per_s")]))


def evaluate(ckpt: Path, tasks: str = "test", ks=KS, episodes: int = 5) -> tuple[int, list[dict]]:
    """The checkpoint's step and the meta-test protocol's rows for it at the trained budget, on its test (or val)
    tasks; `episodes` greedy episodes per task (meta_val's and test's 5 by default)."""
    model, dm = load(str(ckpt))
    protocol = Protocol.of(dm.hparams, ks, episodes, (0, 1, 2))
    net = model.init_net
    rows = evaluate_init(net, dict(net.named_parameters()), dm.family, getattr(dm, f"{tasks}_tasks"), model.adapt,
                         model.inner, model.hparams.gamma, protocol, label="meta-init")
    return int(torch.load(ckpt, weights_only=True)["global_step"]), rows


def job(variant: str, seed: int, settings: dict[str, str], runs: Path, extra: list[str], config: Path) -> dict:
    """Train (or reuse) one run and evaluate (or reuse) its best and last checkpoints."""
    torch.set_num_threads(1)
    run = runs / f"{variant}_s{seed}"
    overrides = [a for key, value in settings.items() for a in (f"--{key}", value)] + extra
    fit_s = train(config, seed, run, overrides=overrides)
    cache = run / "seeds_eval.json"
    if not cache.is_file():
        result = {name: evaluate(run / "checkpoints" / f"{name}.ckpt") for name in ("best", "last")}
        cache.write_text(json.dumps({name: {"step": step, "rows": rows} for name, (step, rows) in result.items()}))
    profile = run / "val_profile.json"  # the last checkpoint on the validation tasks at every K up to 8
    if not profile.is_file():
        rows = evaluate(run / "checkpoints" / "last.ckpt", "val", range(9))[1]
        profile.write_text(json.dumps({k: float(np.mean([r["return"] for r in rows if r["k"] == k]))
                                       for k in range(9)}))
    return {"variant": variant, "seed": seed, "fit_s": fit_s, "eval": json.loads(cache.read_text()),
            "curves": validation_curves(run), "val_profile": json.loads(profile.read_text()), "rate": step_rate(run)}


def table_rows(results: list[dict]) -> list[dict]:
    """One row per variant x seed (and pooled) x checkpoint x K."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in results):
        mine = [r for r in results if r["variant"] == variant]
        for ckpt in ("best", "last"):
            entries = [(str(r["seed"]), r["eval"][ckpt]["rows"], r) for r in mine]
            pooled = [row for _, rows, _ in entries for row in rows]
            pooled_extra = {"ckpt_step": "", "val_k": "", "val_std_last_third": "", "val_mean_last_third": "",
                            "fit_s": float(np.mean([e[2]["fit_s"] for e in entries])),
                            "meta_steps_per_s": float(np.median([e[2]["rate"] for e in entries]))}
            for seed, rows, r in [*entries, ("pooled", pooled, None)]:
                summary = {(s["group"], s["k"]): s for s in summarize(rows)}
                for k in KS:
                    extra = pooled_extra
                    if r is not None:  # the validation spread at k where the run validated at it
                        val_k, curve = curve_at(r, k)
                        final = [v for s, v in curve if s > 2 * curve[-1][0] / 3]
                        extra = {"ckpt_step": r["eval"][ckpt]["step"], "val_k": val_k,
                                 "val_std_last_third": float(np.std(final, ddof=1)),
                                 "val_mean_last_third": float(np.mean(final)), "fit_s": r["fit_s"],
                                 "meta_steps_per_s": r["rate"]}
                    s = summary[("all", k)]
                    flip = summary.get(("flip", k), {}).get("mean", float("nan"))
                    out.append({"variant": variant, "seed": seed, "checkpoint": ckpt, "k": k, "n": s["n"],
                                "mean": s["mean"], "iqm": s["iqm"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                                "flip_mean": flip, **extra})
    return out


def fmt(x, digits: int = 0) -> str:
    return "" if x == "" else f"{x:.{digits}f}"


def markdown(rows: list[dict], by_seed: bool) -> str:
    """Mean [CI], IQM and flipped half for best and last, per seed (seeds.md) or pooled per variant, at the
    fixed K and at K_ALSO. The validation columns are at the row's K where the run validated at it, else at the
    trained K (said in the cell)."""
    lines = [f"| {'seed' if by_seed else 'variant'} | K | best: mean [95% CI] | IQM | flipped | last: mean [95% CI] "
             "| IQM | flipped | val std, last third | val mean, last third | meta-steps/s |", "|---" * 11 + "|"]
    for k in (K, K_ALSO):
        keep = [r for r in rows if r["k"] == k and (by_seed or r["seed"] == "pooled")]
        for r in keep:
            if r["checkpoint"] != "best":
                continue
            last = next(x for x in keep if x["checkpoint"] == "last" and x["seed"] == r["seed"]
                        and x["variant"] == r["variant"])
            if by_seed:
                label = r["seed"]
                at = "" if r["val_k"] in (k, "") else f" (K = {r['val_k']})"  # a run that did not validate at k
                spread = fmt(r["val_std_last_third"]) + at, fmt(r["val_mean_last_third"]) + at
            else:
                seeds = [x for x in rows if x["variant"] == r["variant"] and x["seed"] != "pooled" and x["k"] == k
                         and x["checkpoint"] == "best"]
                label = f"{r['variant']} ({len(seeds)} seeds)"
                other = sorted({x["val_k"] for x in seeds} - {k})
                at = f" (K = {', '.join(map(str, other))})" if other else ""
                spread = (fmt(float(np.mean([x["val_std_last_third"] for x in seeds]))) + " (mean)" + at,
                          fmt(float(np.mean([x["val_mean_last_third"] for x in seeds]))) + at)
            lines.append(f"| {label} | {k} | {fmt(r['mean'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] | "
                         f"{fmt(r['iqm'])} | {fmt(r['flip_mean'])} | {fmt(last['mean'])} [{fmt(last['ci_low'])}, "
                         f"{fmt(last['ci_high'])}] | {fmt(last['iqm'])} | {fmt(last['flip_mean'])} | {spread[0]} | "
                         f"{spread[1]} | {fmt(r['meta_steps_per_s'])} |")
    return "\n".join(lines)


def plot(results: list[dict], rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, third) = plt.subplots(1, 3, figsize=(17, 4.4))
    variants = list(dict.fromkeys(r["variant"] for r in results))
    colours = {v: plt.get_cmap("tab20")(i % 20) for i, v in enumerate(variants)}  # more variants than the cycle
    for r in results:
        val_k, curve = curve_at(r, K_ALSO)
        steps, values = zip(*curve)
        label = f"seed {r['seed']}" if len(variants) == 1 else (r["variant"] if r["seed"] == 0 else None)
        left.plot(steps, values, color=None if len(variants) == 1 else colours[r["variant"]], alpha=0.8,
                  label=label, lw=1.2)
    left.set_xlabel("meta-step")
    left.set_ylabel(f"validation return at K = {val_k}")
    left.set_title(title)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    for i, variant in enumerate(variants):
        for j, ckpt in enumerate(("best", "last")):
            pts = [r for r in rows if r["variant"] == variant and r["k"] == K and r["checkpoint"] == ckpt]
            x = i + (j - 0.5) * 0.3
            seeds = [p for p in pts if p["seed"] != "pooled"]
            pooled = next(p for p in pts if p["seed"] == "pooled")
            right.scatter([x] * len(seeds), [p["mean"] for p in seeds], color="C0" if ckpt == "best" else "C1",
                          s=14, label=(f"{ckpt} checkpoint, per seed" if i == 0 else None))
            right.errorbar([x], [pooled["mean"]], yerr=[[pooled["mean"] - pooled["ci_low"]],
                                                         [pooled["ci_high"] - pooled["mean"]]],
                           color="k", fmt="_", capsize=4)
    right.set_xticks(range(len(variants)), variants, rotation=20, fontsize=8)
    right.set_ylabel(f"held-out return at K = {K} (pooled mean, 95% CI)")
    right.set_title("held-out tasks x 3 evaluation seeds; bars: pooled 95% CI")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    for r in results:
        ks = sorted(int(k) for k in r["val_profile"])
        label = f"seed {r['seed']}" if len(variants) == 1 else (r["variant"] if r["seed"] == 0 else None)
        third.plot(ks, [r["val_profile"][str(k)] for k in ks], "o-", ms=3, alpha=0.8, label=label,
                   color=None if len(variants) == 1 else colours[r["variant"]])
    third.set_xlabel("inner steps K (trained with K = 3)")
    third.set_ylabel("validation return, last checkpoint")
    third.set_title("return against K on the validation tasks")
    third.grid(alpha=0.3)
    third.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: list[dict], out: Path, name: str, by_seed: bool, readme: bool) -> str:
    rows = table_rows(results)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{name}.csv", COLUMNS, rows)
    write_csv(out / f"{name}_val_k.csv", ["variant", "seed", "k", "val_mean"],
              [{"variant": r["variant"], "seed": r["seed"], "k": int(k), "val_mean": v}
               for r in results for k, v in r["val_profile"].items()])
    table = markdown(rows, by_seed)
    (out / f"{name}.md").write_text(table + "\n")
    plot(results, rows, out / f"{name}.png", "validation return per training seed" if by_seed else
         "validation return (first seed of each variant in the legend)")
    if readme:
        readme_table(name, table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ablation", action="store_true", help="each mechanism off in turn, and all off")
    parser.add_argument("--config", default=None,
                        help="without --ablation: the config to train (default configs/cartpole.yaml; the seed tables "
                             "of the first ten sessions: configs/cartpole_init_support.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0-4, or 0-2 with --ablation")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="with --ablation: a subset of " + ", ".join(ABLATION))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs/results"),
                        help="the README's tables are rewritten only for this default")
    parser.add_argument("--runs", default=str(ROOT / "lightning_logs" / "seeds"))
    parser.add_argument("--extra-args", default="", help="more `mamldqn fit` flags for every run (smoke tests)")
    parser.add_argument("--name", default=None, help="output name (default: seeds, or ablation with --ablation)")
    args = parser.parse_args()
    if args.ablation and args.config:
        raise SystemExit(f"--config {args.config}: the ablation variants are settings on {ABLATION_CONFIG.name}, "
                         "so --config is allowed only without --ablation")
    if args.config and not Path(args.config).is_file():
        raise SystemExit(f"--config {args.config}: no such file (a config in configs/, e.g. configs/cartpole.yaml)")
    seeds = args.seeds or ([0, 1, 2] if args.ablation else [0, 1, 2, 3, 4])
    kept = ("default", "no_adapted_collection", "plus_ema", "plus_cosine", "plus_ema_cosine", "ema_cosine_no_adapted",
            "plus_ema_cosine_multi_step")
    variants = {v: ABLATION[v] for v in (args.variants or kept)} if args.ablation else {"default": {}}
    runs, extra = Path(args.runs), shlex.split(args.extra_args)
    start = time.time()
    with ProcessPoolExecutor(args.jobs) as pool:
        config = ABLATION_CONFIG if args.ablation else Path(args.config).resolve() if args.config else CONFIG
        futures = [pool.submit(job, v, s, settings, runs, extra, config) for v, settings in variants.items()
                   for s in seeds]
        results = [f.result() for f in futures]
    name = args.name or ("ablation" if args.ablation else "seeds")
    readme = Path(args.out).resolve() == (ROOT / "docs/results").resolve()
    print(write(results, Path(args.out), name, by_seed=not args.ablation, readme=readme))
    print(f"\nwrote {name}.csv/.md/.png to {args.out}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

"""`make bench`: the speed goals of issues 7 and 13, each a ratio measured side by side in one run (medians over
repeats), printed as a markdown table and written to docs/results/bench.{csv,md} and the README.

(a) our meta-step (the module's meta-objective: its fast paths) vs a per-task Python loop (learn2learn/higher
    style), with a gradient-equality check
(e) the fast paths vs the torch.func reference on whole bare meta-steps, and the floor (issue 13)
(b) batched NumPy envs vs gymnasium's SyncVectorEnv over the same tasks
(c) meta-steps/s of `mamldqn fit` on the default config vs the bare meta-step on the same batches
(d) peak resident memory of a `mamldqn fit` process on the default config

    .venv/bin/python benchmarks/bench.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import date
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytorch_lightning as pl
import torch
from runs import readme_table

from mamldqn_pl import MAMLDQN, MetaDQNDataModule
from mamldqn_pl.cli import MAMLDQNCLI, TRAINER_DEFAULTS
from mamldqn_pl.memory import keep_freed_memory
from mamldqn_pl.meta import split_for_adaptation, td_loss
from mamldqn_pl.meta.body import features
from mamldqn_pl.meta.body import q_values as body_q_values
from mamldqn_pl.report import write_csv
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import make_family

ROOT = Path(__file__).resolve().parents[1]
ROWS: list[tuple[str, str, str, str]] = []


def median_time(fn, repeats: int) -> float:
    return paired_medians([fn], repeats)[0]


def random_batch(n_tasks: int, n: int = 128) -> dict:
    g = torch.Generator().manual_seed(n_tasks)

    def part():
        return {"obs": torch.randn(n_tasks, n, 4, generator=g), "actions": torch.randint(2, (n_tasks, n), generator=g),
                "rewards": torch.ones(n_tasks, n), "next_obs": torch.randn(n_tasks, n, 4, generator=g),
                "terminated": (torch.rand(n_tasks, n, generator=g) < 0.05).float()}
    return {"support": part(), "query": part()}


def loop_meta_grad(model: MAMLDQN, batch: dict) -> list[torch.Tensor]:
    """The per-task Python loop a learn2learn/higher user writes: adapt each task in turn with
    torch.autograd.grad (create_graph for second order); for head-only, the body's features once per task."""
    hp, net = model.hparams, model.net
    params = dict(net.named_parameters())
    head_only = model.adapt == "head"
    n_tasks = batch["support"]["obs"].shape[0]
    total = 0.0
    for t in range(n_tasks):
        s = {k: v[t] for k, v in batch["support"].items()}
        q = {k: v[t] for k, v in batch["query"].items()}
        with torch.no_grad():
            ts = s["rewards"] + hp.gamma * (1 - s["terminated"]) * model.target_net(s["next_obs"]).max(-1).values
            tq = q["rewards"] + hp.gamma * (1 - q["terminated"]) * model.target_net(q["next_obs"]).max(-1).values
        if head_only:
            xs, xq = net.body(s["obs"]), net.body(q["obs"])
            fast = {"weight": net.head.weight, "bias": net.head.bias}

            def qf(f, x):
                return torch.func.functional_call(net.head, f, (x,))
        else:
            xs, xq = s["obs"], q["obs"]
            fast = dict(params)

            def qf(f, x):
                return torch.func.functional_call(net, f, (x,))
        for _ in range(hp.inner_steps):
            loss = td_loss(qf(fast, xs), s["actions"], ts, hp.td_loss)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not model.first_order)
            fast = {k: w - hp.inner_lr * g for (k, w), g in zip(fast.items(), grads)}
        total = total + td_loss(qf(fast, xq), q["actions"], tq, hp.td_loss)
    return torch.autograd.grad(total / n_tasks, list(params.values()))


def bench_meta_step(repeats: int, task_counts: list[int]) -> None:
    for adapt in ("head", "all"):
        for first_order in (False, True):
            for n_tasks in task_counts:
                torch.manual_seed(0)
                model = MAMLDQN(algorithm="maml", adapt=adapt, first_order=first_order, inner_steps=3)
                batch = random_batch(n_tasks)
                err = max((a - b).abs().max().item() for a, b in zip(meta_grads(model, batch),
                                                                      loop_meta_grad(model, batch)))
                t_ours = median_time(partial(meta_grads, model, batch), repeats)
                t_loop = median_time(partial(loop_meta_grad, model, batch), repeats)
                order = "first" if first_order else "second"
                ROWS.append((f"(a) meta-step, {adapt}, {order} order, {n_tasks} tasks, K=3",
                             f"{1 / t_ours:.1f} steps/s ours vs {1 / t_loop:.1f} loop (grad err {err:.1e})",
                             f"{t_loop / t_ours:.2f}x", ">= 4x at 16 tasks" if n_tasks == 16 else ""))


def step_all(step, actions: np.ndarray) -> None:
    for a in actions:
        step(a)


def bench_envs(repeats: int, n_envs: int, steps: int) -> None:
    for name in ("cartpole", "mountaincar", "acrobot"):
        family = make_family(name)
        tasks = family.sample(n_envs, make_generator(0))
        actions = np.random.default_rng(0).integers(family.n_actions, size=(steps, n_envs))
        batched = family.batched(tasks, make_generator(1))
        sync = gym.vector.SyncVectorEnv([partial(family.make_env, t) for t in tasks],
                                        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        sync.reset(seed=0)
        run_batched, run_sync = partial(step_all, batched.step, actions), partial(step_all, sync.step, actions)
        t_b, t_s = paired_medians([run_batched, run_sync], repeats)  # interleaved: load drifts hit both alike
        ROWS.append((f"(b) {name}: {n_envs} tasks x {steps} steps", f"{n_envs * steps / t_b:,.0f} env-steps/s batched "
                     f"vs {n_envs * steps / t_s:,.0f} SyncVectorEnv", f"{t_s / t_b:.1f}x", ">= 30x"))
        sync.close()


def paired_medians(fns: list, repeats: int) -> list[float]:
    """Median seconds of each function, timed in turn within every repeat (so load drifts hit all alike)."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def torch_func_objective(model: MAMLDQN, batch: dict) -> torch.Tensor:
    """The meta-objective as it was before issue 13 (the reference): separate body and theta^- passes over
    support and query (with autograd on both), and the vmapped torch.func inner loop."""
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), model.adapt)
    fast_inner, model.inner = model.inner, dataclasses.replace(model.inner, written_out=False)
    try:  # written_out=False also keeps theta^-'s forward the plain module's
        support = model._inner_batch(split, batch["support"], None)
        query = model._inner_batch(split, batch["query"], None)
        return model.inner.meta_losses(split.q_fn, split.fast, support, query).mean()
    finally:
        model.inner = fast_inner


def bare_step(model: MAMLDQN, batch: dict, opt: torch.optim.Optimizer, written_out: bool = True) -> None:
    """One meta-step without Lightning: meta-objective, backward, clipping, Adam (what training_step does);
    written_out=False: the same step with the reference objective."""
    loss = model.meta_objective(batch, with_pre=False)[0] if written_out else torch_func_objective(model, batch)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.net.parameters(), model.hparams.grad_clip)
    opt.step()


def floor_pass(model: MAMLDQN, batch: dict) -> None:
    """The part of a head-only meta-step no implementation can skip: the body's forward and backward over all
    of the step's rows, and theta^-'s forward over their next observations."""
    obs = torch.cat([batch["support"]["obs"], batch["query"]["obs"]], 1).flatten(0, 1)
    next_obs = torch.cat([batch["support"]["next_obs"], batch["query"]["next_obs"]], 1).flatten(0, 1)
    model.net.zero_grad()
    features(model.net, obs).sum().backward()  # the body as the fast paths run it (meta.body)
    with torch.no_grad():
        body_q_values(model.target_net, next_obs)


def meta_grads(model: MAMLDQN, batch: dict, written_out: bool = True) -> list[torch.Tensor]:
    """Meta-gradient of the module's objective (its fast paths), or of the reference one with written_out=False."""
    meta_loss = model.meta_objective(batch, with_pre=False)[0] if written_out else torch_func_objective(model, batch)
    return torch.autograd.grad(meta_loss, list(model.net.parameters()))


def bench_fast_paths(repeats: int) -> None:
    """Issue 13: whole bare meta-steps of the default config's shape (32 tasks, K=3, 128 + 128 rows) with the
    module's meta-objective (fast paths) against the reference one (`torch_func_objective`), and the floor."""
    for adapt, n_tasks in (("head", 32), ("all", 16), ("all", 32)):
        for first_order in (False, True):
            if adapt == "all" and first_order:
                continue
            torch.manual_seed(0)
            model = MAMLDQN(algorithm="maml", adapt=adapt, first_order=first_order, inner_steps=3)
            batch = random_batch(n_tasks)
            ref, fast = meta_grads(model, batch, False), meta_grads(model, batch, True)
            err = max(((a - b).norm() / b.norm()).item() for a, b in zip(fast, ref))
            # the reference: the step as it was, with torch's default single-tensor Adam on the CPU; ours: the
            # module's own optimiser (configure_optimizers: the same Adam, multi-tensor, bitwise equal)
            opts = (torch.optim.Adam(model.net.parameters(), lr=1e-3, foreach=False), model.configure_optimizers())
            calls = [partial(bare_step, model, batch, opt, fast) for opt, fast in zip(opts, (False, True))]
            calls += [partial(floor_pass, model, batch)] if adapt == "head" else []
            times = paired_medians(calls, repeats)
            order = "first" if first_order else "second"
            name = "ANIL (default config)" if adapt == "head" else "full-network MAML"
            target = ">= 1.5x" if adapt == "head" else ">= 1.3x"
            ROWS.append((f"(e) bare meta-step, {name}, {order} order, {n_tasks} tasks, K=3: fast path vs torch.func",
                         f"{times[1] * 1e3:.1f} vs {times[0] * 1e3:.1f} ms (grad err {err:.1e} relative)",
                         f"{times[0] / times[1]:.2f}x", target))
            if adapt == "head" and not first_order:
                ROWS.append(("(e') floor of that step: body forward + backward over its 8,192 rows and theta^-'s "
                             "forward", f"{times[2] * 1e3:.1f} ms; full step {times[1] * 1e3:.1f} ms fast, "
                             f"{times[0] * 1e3:.1f} ms torch.func", f"{times[2] / times[1]:.0%} of the fast step", ""))


class _StepClock(pl.Callback):
    """Timestamps of meta-steps, to time the steady state (after the buffers' warm start)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter())


def timed_fit(steps: int, tmp: str, *extra: str) -> tuple[MAMLDQNCLI, float, float]:
    """A default-config fit; its rate over all steps after the warm start, and its median step's rate."""
    cli = MAMLDQNCLI(MAMLDQN, MetaDQNDataModule, run=False, trainer_defaults=TRAINER_DEFAULTS,
                     seed_everything_default=0, args=["--config", str(ROOT / "configs/cartpole.yaml"),
                                                      "--run_dir", tmp, "--trainer.max_steps", str(steps),
                                                      "--trainer.enable_progress_bar", "false", *extra])
    clock = _StepClock()
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, cli.datamodule)
    skip = min(50, steps // 4)
    fit_rate = (len(clock.times) - 1 - skip) / (clock.times[-1] - clock.times[skip])
    typical_rate = 1.0 / statistics.median(np.diff(clock.times[skip:]))  # a step without validation/ckpt
    return cli, fit_rate, typical_rate


def bench_fit_vs_bare(steps: int, n_bare: int = 100) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _, process_rate, process_typical = timed_fit(steps, f"{tmp}/process", "--data.collection", "process",
                                                     "--trainer.accelerator", "cpu")  # the process is CPU-only
        cli, fit_rate, typical_rate = timed_fit(steps, f"{tmp}/current")
        model, dm = cli.model, cli.datamodule
        batches = [dm.next_batch() for _ in range(n_bare)]
        opt = model.configure_optimizers()  # the fit's own optimiser

        def bare():
            for batch in batches:
                bare_step(model, batch, opt)

        bare_rate = len(batches) / median_time(bare, 3)
    ROWS.append((f"(c) `mamldqn fit` default config ({steps} steps, validation and checkpoints included) "
                 "vs bare meta-step on its batches", f"{fit_rate:.1f} vs {bare_rate:.1f} meta-steps/s",
                 f"{fit_rate / bare_rate:.0%}", ">= 90%"))
    ROWS.append(("(c') the same, median step (steps without validation or checkpoint: collection, sampling, "
                 "target sync, Lightning's loop, logging)", f"{typical_rate:.1f} vs {bare_rate:.1f} meta-steps/s",
                 f"{typical_rate / bare_rate:.0%}", ""))
    ROWS.append(("(c) the same with `--data.collection process` (the data side in a second process; the batches of "
                 "`ahead`)", f"{process_rate:.1f} vs {bare_rate:.1f} meta-steps/s", f"{process_rate / bare_rate:.0%}",
                 ">= 90%"))
    ROWS.append(("(c') its median step", f"{process_typical:.1f} vs {bare_rate:.1f} meta-steps/s",
                 f"{process_typical / bare_rate:.0%}", ""))


def bench_memory(steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run([sys.executable, "-m", "mamldqn_pl", "fit", "--config", str(ROOT / "configs/cartpole.yaml"),
                        "--run_dir", tmp, "--trainer.max_steps", str(steps), "--trainer.enable_progress_bar",
                        "false"], check=True, capture_output=True, cwd=ROOT)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    ROWS.append((f"(d) peak RSS of `mamldqn fit` (default config, {steps} steps)",
                 f"{max(peak, before) / 1024:.0f} MiB", "", "<= 1 GB"))


def main() -> None:
    parser = argparse.ArgumentParser(description="mamldqn_pl speed benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    keep_freed_memory()  # as `mamldqn` does: bare steps and fits alike (mamldqn_pl/memory.py)
    repeats = 2 if args.quick else 7  # --quick: every row once, small (a smoke run for `make test`)
    bench_meta_step(repeats, [4] if args.quick else [4, 16, 64])
    bench_fast_paths(2 if args.quick else 21)
    bench_envs(repeats, 32 if args.quick else 256, 20 if args.quick else 200)
    bench_fit_vs_bare(*((80, 20) if args.quick else (1000, 100)))
    bench_memory(30 if args.quick else 1000)
    print(f"\n{date.today()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread, "
          f"torch {torch.__version__}, medians over {repeats} repeats\n")
    table = "\n".join(["| measurement | figures | ratio | target |", "|---|---|---|---|",
                       *("| " + " | ".join(row) + " |" for row in ROWS)])
    print(table)
    if not args.quick:  # the README's table and docs/results/bench.{csv,md}
        out = ROOT / "docs" / "results"
        write_csv(out / "bench.csv", ("measurement", "figures", "ratio", "target"),
                  [dict(zip(("measurement", "figures", "ratio", "target"), row)) for row in ROWS])
        (out / "bench.md").write_text(table + "\n")
        readme_table("bench", table)


if __name__ == "__main__":
    main()

"""Shared small settings so the suite stays fast on 2 CPU cores."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# MAMLDQN_TEST_DEVICE=cuda runs the device-aware tests (fast paths, tests/test_device.py) on a GPU
DEVICE = torch.device(os.environ.get("MAMLDQN_TEST_DEVICE", "cpu"))


def to_device(batch: dict) -> dict:
    """A data module's meta-batch (tensors and dicts of tensors) on DEVICE, as Lightning's transfer does."""
    return {k: {f: t.to(DEVICE) for f, t in v.items()} if isinstance(v, dict) else v.to(DEVICE)
            for k, v in batch.items()}
# A tiny but real configuration of the default CartPole config, for CLI runs in subprocesses.
TINY = ["--config", str(ROOT / "configs/cartpole.yaml"), "--trainer.enable_progress_bar", "false",
        "--data.pool_size", "6", "--data.tasks_per_batch", "3", "--data.support_size", "16",
        "--data.query_size", "16", "--data.learning_starts", "40", "--data.adapt_budget", "20",
        "--data.buffer_capacity", "100", "--data.n_val_tasks", "2", "--data.n_test_tasks", "4",
        "--model.hidden", "[16]", "--meta_val.every_n_steps", "10", "--meta_val.episodes", "1",
        "--trainer.log_every_n_steps", "5"]

# Epochs of 7 meta-steps and checkpoints every 5: step 10 falls in the middle of the second epoch.
# Exact resume with every mechanism on (the default config collects with adapted policies); a run stopped at 10
# and resumed to 20 must follow the 20-step run's cosine rate: give both the same horizon.
RESUME_ARGS = [*TINY, "--meta_val.every_n_steps", "5", "--trainer.limit_train_batches", "7",
               "--model.ema_decay", "0.9", "--model.meta_lr_schedule", "cosine", "--model.meta_lr_horizon", "20",
               "--data.n_step", "3"]


def refused(args: list[str], capsys) -> tuple[int, list[str]]:
    """The CLI's entry point in this process, for a command that must be refused: its exit code and its stderr
    lines. Cheaper than `mamldqn` (no Lightning import); tests/test_cli.py checks the subprocess path."""
    from mamldqn_pl.cli import main

    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err.strip().splitlines()


def mamldqn(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI as a user would: `python -m mamldqn_pl ...` in the project root."""
    return subprocess.run([sys.executable, "-m", "mamldqn_pl", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)

SMALL_DATA = dict(pool_size=8, tasks_per_batch=4, collect_steps=2, support_size=16, query_size=16,
                  buffer_capacity=200, adapt_budget=20, epsilon_adapt=0.25, learning_starts=40, retire_after=0,
                  n_val_tasks=4, n_test_tasks=4)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def reference_step(c, slots: np.ndarray, q_values, epsilon: float) -> None:
    """One env step of Collector `c` as Collector.step took it before `Collector.run` (plain torch, one buffer
    write per step, values asked for at any epsilon): the reference the collector's shortcuts are checked against."""
    from mamldqn_pl.data.collector import epsilon_greedy

    obs = torch.from_numpy(c.env.obs[slots])
    counts = torch.from_numpy(c.env.action_counts[slots])
    actions = epsilon_greedy(q_values(obs), epsilon, c.generator, counts)
    next_obs, reward, terminated, truncated = c.env.step(actions.numpy(), slots)
    done = terminated | truncated
    c.buffers.add(torch.as_tensor(slots), obs, actions, torch.from_numpy(reward), torch.from_numpy(next_obs),
                  torch.from_numpy(terminated), torch.from_numpy(done))
    c.env_steps[slots] += 1
    c.running_return[slots] += torch.from_numpy(reward).double()
    if done.any():
        ended = slots[done]
        c.finished_returns.extend(c.running_return[ended].tolist())
        c.running_return[ended] = 0.0

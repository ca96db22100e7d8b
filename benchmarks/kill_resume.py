"""Kill test (issue 5): SIGKILL `mamldqn fit` at random moments, half of them while a checkpoint is being
written, resume with `--ckpt_path last` each time, and check every resume starts from an intact checkpoint
and carries the step count on.

    .venv/bin/python benchmarks/kill_resume.py [--kills 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", str(ROOT / "configs/cartpole.yaml"), "--trainer.enable_progress_bar", "false",
        "--data.pool_size", "6", "--data.tasks_per_batch", "3", "--data.support_size", "16",
        "--data.query_size", "16", "--data.learning_starts", "40", "--data.adapt_budget", "20",
        "--data.buffer_capacity", "100", "--data.n_val_tasks", "2", "--model.hidden", "[16]",
        "--meta_val.every_n_steps", "5", "--meta_val.episodes", "1", "--trainer.limit_train_batches", "7"]


def fit(run: Path, max_steps: int, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mamldqn_pl", "fit", *TINY, "--trainer.max_steps", str(max_steps),
           "--run_dir", str(run)] + (["--ckpt_path", "last"] if resume else [])
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_during_write(proc: subprocess.Popen, tmp: Path, limit: float) -> bool:
    """Poll for the checkpoint's temporary file and SIGKILL the moment it exists; True if it was caught."""
    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None:
        if tmp.exists():
            proc.send_signal(signal.SIGKILL)
            return True
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="mamldqn-kill-"))
    run = work / "run"
    last = run / "checkpoints" / "last.ckpt"
    first = fit(run, 10, resume=False)
    assert first.wait() == 0, first.stderr.read()
    steps, during_write, intact = [10], 0, 0
    for i in range(args.kills):
        proc = fit(run, 10**6, resume=True)
        if i % 2:
            during_write += kill_during_write(proc, run / "checkpoints" / ".last.ckpt.tmp", limit=15.0)
        else:
            time.sleep(rng.uniform(3.0, 8.0))
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(last, weights_only=True)  # raises if the kill left a torn file
        intact += 1
        if ckpt["global_step"] < steps[-1]:
            raise SystemExit(f"kill {i + 1}: step went back from {steps[-1]} to {ckpt['global_step']}")
        steps.append(ckpt["global_step"])
    final = fit(run, steps[-1] + 5, resume=True)
    assert final.wait() == 0, final.stderr.read()
    end_step = torch.load(last, weights_only=True)["global_step"]
    shutil.rmtree(work)
    print(f"kills: {args.kills} tried, {during_write} landed while a checkpoint was being written; "
          f"{intact} resumes read an intact last.ckpt; steps after each kill: {steps}; "
          f"final resume ran {steps[-1]} -> {end_step}")


if __name__ == "__main__":
    main()

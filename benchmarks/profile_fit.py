"""Where the time of `mamldqn fit` goes beyond the bare meta-step (issue 13, item 3): a default-config fit with
the methods that make up a meta-step wrapped in wall-clock timers. Prints, per meta-step, the time of each part
(nested parts are also counted in their parents) and what is left for Lightning's loop.

    .venv/bin/python benchmarks/profile_fit.py [--steps 1000] [--extra-args "--data.collection process"]
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
import time
from collections import defaultdict

import pytorch_lightning as pl
import torch
from runs import ROOT

from mamldqn_pl import MAMLDQN, MetaDQNDataModule
from mamldqn_pl.cli import MAMLDQNCLI, TRAINER_DEFAULTS
from mamldqn_pl.memory import keep_freed_memory

TOTALS: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def timed(owner: object, name: str, label: str) -> None:
    """Replace owner.name (an object's method, or a class's: then every instance's) with a wrapper that adds its
    wall time to TOTALS[label]."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            TOTALS[label] += time.perf_counter() - start
            CALLS[label] += 1

    setattr(owner, name, wrapper)


class _Clock(pl.Callback):
    """The fit's wall time from before its first batch is fetched (Lightning fetches a batch, and with it the data
    side's work, before on_train_batch_start) to the end of its last meta-step."""

    def __init__(self) -> None:
        self.start = 0.0
        self.end = 0.0

    def on_train_start(self, *args) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.end = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--extra-args", default="")
    args = parser.parse_args()
    keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        cli = MAMLDQNCLI(MAMLDQN, MetaDQNDataModule, run=False, trainer_defaults=TRAINER_DEFAULTS,
                         seed_everything_default=0,
                         args=["--config", str(ROOT / "configs/cartpole.yaml"), "--run_dir", tmp,
                               "--trainer.max_steps", str(args.steps), "--trainer.enable_progress_bar", "false",
                               *shlex.split(args.extra_args)])
        model, dm = cli.model, cli.datamodule
        for owner, names in ((dm, ["next_batch", "_make_batch", "_warm_start", "_collect", "_support_query"]),
                             (model, ["training_step", "meta_objective", "manual_backward", "clip_gradients",
                                      "_log_step", "adapted_q_values", "q_values"])):
            for name in names:
                timed(owner, name, f"{type(owner).__name__}.{name}")
        for callback in cli.trainer.callbacks:
            for hook in ("on_train_batch_end", "on_validation_end", "on_train_batch_start"):
                if type(callback).__dict__.get(hook) is not None:
                    timed(callback, hook, f"{type(callback).__name__}.{hook}")
        timed(torch.optim.Adam, "step", "Adam.step")  # the optimiser Lightning wraps is made at fit's start
        clock = _Clock()
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(model, dm)
    steps = args.steps
    wall = clock.end - clock.start
    print(f"{steps} meta-steps in {wall:.1f} s: {wall / steps * 1e3:.2f} ms a step\n")
    print("| part | ms / meta-step | calls |\n|---|---|---|")
    for label, total in sorted(TOTALS.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {total / steps * 1e3:.2f} | {CALLS[label]} |")
    accounted = TOTALS["MetaDQNDataModule.next_batch"] + TOTALS["MAMLDQN.training_step"] + sum(
        v for k, v in TOTALS.items() if k.split(".")[0] not in ("MetaDQNDataModule", "MAMLDQN", "Adam"))
    print(f"| rest (Lightning's loop, hooks not listed) | {(wall - accounted) / steps * 1e3:.2f} | |")


if __name__ == "__main__":
    main()

"""A feasibility probe for issue 10, not a training mode: meta-train with theta^- frozen to another run's trained
initialisation (the "teacher"), so that every TD target, support and query, bootstraps from the teacher's values.
`benchmarks/failure_modes.py --targets-from` showed that handing an init a good seed's values at meta-test rescues
most bad seeds; this asks the converse: does meta-training against a fixed position-aware value function give
good initialisations on every seed? Evaluate the runs' checkpoints with `failure_modes.py --targets-from
teacher=TEACHER.ckpt` (their own values were never trained to be targets). Used from the command line, with the
target network never synced (PYTHONPATH must hold benchmarks/):

    PYTHONPATH=.:benchmarks .venv/bin/python -m mamldqn_pl fit --config configs/cartpole.yaml ... \\
        --target_sync.tau 0 --target_sync.every_n_steps 1000000000 \\
        --trainer.callbacks+=teacher_targets.TeacherTargets --trainer.callbacks.path TEACHER.ckpt
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class TeacherTargets(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        """theta^- := the teacher's theta (its `net.*` weights); the run's target sync must never copy over it."""
        state = torch.load(self.path, weights_only=True)["state_dict"]
        teacher = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        pl_module.target_net.load_state_dict(teacher)

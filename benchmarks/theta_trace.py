"""A callback that records theta (the evaluated initialisation) every n meta-steps, without touching the run: it
reads parameters only, draws no random numbers, so a traced run is bitwise the untraced one. `val_noise.py
--trace` reads the file to set the moves theta really makes between validation checks beside random ones of
the same size. Used from the command line (PYTHONPATH must hold benchmarks/):

    PYTHONPATH=.:benchmarks .venv/bin/python -m mamldqn_pl fit --config configs/cartpole.yaml ... \
        --trainer.callbacks+=theta_trace.ThetaTrace --trainer.callbacks.path RUN/theta_trace.pt
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class ThetaTrace(pl.Callback):
    def __init__(self, path: str, every_n_steps: int = 500) -> None:
        self.path, self.every = Path(path), every_n_steps
        self.trace: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, *args) -> None:
        if trainer.global_step % self.every == 0:
            self.trace[trainer.global_step] = {k: v.detach().clone() for k, v in
                                               pl_module.init_net.named_parameters()}

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.trace, self.path)

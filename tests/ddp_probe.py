"""A callback for the DDP tests, loaded by the CLI in each rank (PYTHONPATH=tests): it records what the parent
test needs to recompute the first meta-gradient in one process, and checks after every meta-step that all
ranks hold bitwise-identical parameters."""

import json
import os
from pathlib import Path

import pytorch_lightning as pl
import torch

from mamldqn_pl.distributed import gather_objects


class DDPProbe(pl.Callback):
    def __init__(self) -> None:
        self.out = Path(os.environ["DDP_PROBE_DIR"])
        self.out.mkdir(parents=True, exist_ok=True)
        self.checks = 0
        self.max_diff = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0 and trainer.is_global_zero:
            torch.save(pl_module.state_dict(), self.out / "initial_state.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            torch.save(batch, self.out / f"batch_rank{trainer.global_rank}.pt")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0:
            grads = {k: p.grad.detach().clone() for k, p in pl_module.net.named_parameters()}
            torch.save(grads, self.out / f"grads_rank{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()]).cpu()
        ranks = gather_objects(flat)
        self.max_diff = max([self.max_diff] + [float((r - ranks[0]).abs().max()) for r in ranks])
        self.checks += 1

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            summary = {"checks": self.checks, "max_diff": self.max_diff, "world_size": trainer.world_size}
            (self.out / "summary.json").write_text(json.dumps(summary))

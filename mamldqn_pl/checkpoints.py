"""Checkpoint files: written atomically, read only as plain data (weights_only), checked before Lightning."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from mamldqn_pl.errors import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file, fsyncs it, renames it over the target and fsyncs the folder: a kill at
    any moment leaves either the old checkpoint or the new one, never a torn file. Loads with weights_only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also saves at the run's last step when max_steps is not a multiple of
    every_n_train_steps (Lightning's own saves only on multiples), so any max_steps ends evaluated and saved."""

    def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
        every = self._every_n_train_steps
        final = trainer.global_step == trainer.max_steps and every > 0 and trainer.global_step % every
        if final:
            self._every_n_train_steps = trainer.global_step  # Lightning's own save path, at this one step
        try:
            super().on_train_batch_end(trainer, pl_module, *args)
        finally:
            self._every_n_train_steps = every


def read_checkpoint(path: str | Path, flag: str = "--ckpt_path") -> dict[str, Any]:
    """Load a checkpoint as plain data, or raise a one-line ConfigError saying what is wrong with it (naming the
    flag that gave the path).

    weights_only=True means a pickle that would run code is refused, never executed.
    """
    path = Path(path)
    if not path.is_file():
        hint = "give a path, `best` or `last`" if flag == "--ckpt_path" else "give the path of a checkpoint file"
        raise ConfigError(f"{flag} {path}: no such file; {hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read is the same user-facing problem
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{flag} {path}: not a readable checkpoint ({type(err).__name__}: "
                          f"{reason[:160]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ConfigError(f"{flag} {path}: not a mamldqn/Lightning checkpoint (no state_dict/global_step)")
    return ckpt


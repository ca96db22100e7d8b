"""The `mamldqn` command: LightningCLI with the run folder, loggers and checkpoints wired in.

Everything of a run lives in `run_dir` (default lightning_logs/<config name>): TensorBoard and CSV logs,
config.yaml, checkpoints/{best,last}.ckpt and the adaptation report, so `--ckpt_path last` always finds it.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from mamldqn_pl.callbacks import MetaTestEvaluation, TargetNetworkSync
from mamldqn_pl.checkpoints import AtomicCheckpointIO, read_checkpoint
from mamldqn_pl.data import MetaDQNDataModule
from mamldqn_pl.errors import ConfigError
from mamldqn_pl.loggers import ResumableCSVLogger
from mamldqn_pl.module import MAMLDQN

TRAINER_DEFAULTS = {
    "max_steps": 2000,
    "limit_train_batches": 250,  # the stream is endless: an "epoch" is this many meta-steps
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 25,
    "inference_mode": False,  # the meta-test adapts, so it needs autograd
    "enable_model_summary": False,
}


class MAMLDQNCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=str, default="lightning_logs/run",
                            help="folder of this run: logs, checkpoints/, adaptation report")
        parser.add_lightning_class_args(TargetNetworkSync, "target_sync")
        parser.add_lightning_class_args(MetaTestEvaluation, "meta_val")
        for key in ("obs_dim", "n_actions", "obs_scale"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    def _run_dir(self) -> Path:
        return Path(self._get(self.config_init, "run_dir"))

    def instantiate_trainer(self, **kwargs):
        run_dir = self._run_dir()
        config = self._get(self.config_init, "trainer", default={})
        every = self._get(self.config_init, "meta_val").every_n_steps
        monitor = f"meta_val/return_k{self.model.hparams.inner_steps}"  # validation return at the trained K
        best = ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode="max", save_top_k=1,
            save_last=True, every_n_train_steps=every, enable_version_counter=False,
        )
        callbacks = list(config.get("callbacks") or []) + [best]
        loggers = [TensorBoardLogger(run_dir, name="", version=""), ResumableCSVLogger(run_dir, name="", version="")]
        plugins = list(config.get("plugins") or []) + [AtomicCheckpointIO()]
        return super().instantiate_trainer(callbacks=callbacks, logger=loggers, default_root_dir=str(run_dir),
                                           plugins=plugins, **kwargs)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads a checkpoint path's hyperparameters while parsing: check the file first."""
        ckpt = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        if ckpt and ckpt not in ("best", "last"):
            read_checkpoint(ckpt)
        super()._parse_ckpt_path()

    def _ckpt(self, subcommand: str, default: str | None) -> None:
        """Resolve `best`/`last` to the run's fixed checkpoint folder; a missing or bad file is a user error."""
        sub = self.config_init[subcommand]
        ckpt = sub.get("ckpt_path") or default
        if ckpt in ("best", "last"):
            path = self._run_dir() / "checkpoints" / f"{ckpt}.ckpt"
            if not path.is_file():
                raise ConfigError(f"--ckpt_path {ckpt}: no checkpoint at {path} (train first with "
                                  f"`mamldqn fit --config ... --run_dir {self._run_dir()}`)")
            ckpt = str(path)
        if ckpt is not None:
            read_checkpoint(ckpt)
        sub["ckpt_path"] = ckpt

    def before_fit(self) -> None:
        """Resume only on request; never overwrite another run's checkpoints by starting afresh over them."""
        self._ckpt("fit", None)
        max_steps, every = self.trainer.max_steps, self._get(self.config_init, "meta_val").every_n_steps
        if max_steps < 1 or max_steps % every:
            raise ConfigError(f"trainer.max_steps: {max_steps} must be a positive multiple of meta_val.every_n_steps "
                              f"({every}), so that the final steps are evaluated and checkpointed")
        last = self._run_dir() / "checkpoints" / "last.ckpt"
        if self.config_init["fit"].get("ckpt_path") is None and last.is_file():
            raise ConfigError(f"--run_dir {self._run_dir()} already holds a run ({last}); resume it with "
                              "--ckpt_path last, or choose another --run_dir")

    def before_test(self) -> None:
        self._ckpt("test", "best")


# Lightning notices that do not apply here: the checkpoint is taken after the meta-step on purpose, and
# the others are a torch-internal deprecation and a hint that does not apply to num_workers=0 by design.
QUIET = (
    "Using ModelCheckpoint with manual optimization",
    re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
    "The '.*dataloader' does not have many workers",
)


def main(args: list[str] | None = None) -> None:
    """Entry point of `mamldqn` and `python -m mamldqn_pl`; user mistakes end in one line and exit code 2."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["compare"]:  # not a Lightning stage: several checkpoints into one report
        from mamldqn_pl.compare import main as compare_main

        return compare_main(argv[1:])
    for message in QUIET:
        warnings.filterwarnings("ignore", message=message)
    try:
        MAMLDQNCLI(MAMLDQN, MetaDQNDataModule, args=args, trainer_defaults=TRAINER_DEFAULTS,
                   seed_everything_default=0, save_config_kwargs={"overwrite": True},
                   parser_kwargs={"exit_on_error": False})
    except ArgumentError as err:  # unknown keys, wrong types: jsonargparse's message, on one line
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"mamldqn: error: {message} (see mamldqn --help)", file=sys.stderr)
        sys.exit(2)
    except ConfigError as err:
        print(f"mamldqn: error: {err}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as err:  # diverged: checkpoints written before stay as they were
        print(f"mamldqn: error: {err}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()

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
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from mamldqn_pl.callbacks import MetaTestEvaluation, TargetNetworkSync
from mamldqn_pl.checkpoints import AtomicCheckpointIO, RunCheckpoint, read_checkpoint
from mamldqn_pl.data import MetaDQNDataModule
from mamldqn_pl.errors import ConfigError
from mamldqn_pl.loggers import ResumableCSVLogger
from mamldqn_pl.memory import keep_freed_memory
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
        meta_val = self._get(self.config_init, "meta_val")
        every = meta_val.every_n_steps
        monitor = f"meta_val/return_k{meta_val.monitored_k(self.model.hparams.inner_steps)}"
        best = RunCheckpoint(
            dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode="max", save_top_k=1,
            save_last=True, every_n_train_steps=every, enable_version_counter=False,
        )
        callbacks = list(config.get("callbacks") or []) + [best]
        loggers = [TensorBoardLogger(run_dir, name="", version=""), ResumableCSVLogger(run_dir, name="", version="")]
        plugins = list(config.get("plugins") or []) + [AtomicCheckpointIO()]
        return super().instantiate_trainer(callbacks=callbacks, logger=loggers, default_root_dir=str(run_dir),
                                           plugins=plugins, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        self._argv = list(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI builds the model from a checkpoint's own hyperparameters: resolve best/last first so that
        this holds for them too, and refuse a checkpoint that does not fit the config's data or flags that
        contradict it, instead of a traceback or a silently ignored flag."""
        if not self.config.get("subcommand"):
            return
        sub = self.config[self.config.subcommand]
        ckpt = sub.get("ckpt_path")
        if self.config.subcommand == "test" and ckpt is None:
            ckpt = "best"
        if ckpt in ("best", "last"):
            ckpt = str(self._resolve(ckpt, Path(sub.get("run_dir"))))
            sub["ckpt_path"] = ckpt
        if not ckpt:
            return
        check_fits(read_checkpoint(ckpt), ckpt, sub, self._argv)
        kept = {k: sub["model"][k] for k in TEST_SETTINGS if k in (sub.get("model") or {})}
        super()._parse_ckpt_path()  # the model's settings from the checkpoint...
        for key, value in kept.items():  # ...but how to test stays the user's
            self.config[self.config.subcommand]["model"][key] = value

    @staticmethod
    def _resolve(name: str, run_dir: Path) -> Path:
        path = run_dir / "checkpoints" / f"{name}.ckpt"
        if not path.is_file():
            raise ConfigError(f"--ckpt_path {name}: no checkpoint at {path} (train first with "
                              f"`mamldqn fit --config ... --run_dir {run_dir}`)")
        return path

    def before_fit(self) -> None:
        """Resume only on request; never overwrite another run's checkpoints by starting afresh over them."""
        if self.trainer.max_steps < 1:
            raise ConfigError(f"trainer.max_steps: {self.trainer.max_steps} must be >= 1 (the run's length in "
                              "meta-steps; its last step is always evaluated and checkpointed)")
        last = self._run_dir() / "checkpoints" / "last.ckpt"
        if self.config_init["fit"].get("ckpt_path") is None and last.is_file():
            raise ConfigError(f"--run_dir {self._run_dir()} already holds a run ({last}); resume it with "
                              "--ckpt_path last, or choose another --run_dir")


# model settings that describe how to test, not what was trained: a test may change them
TEST_SETTINGS = ("test_ks", "test_episodes", "test_seeds", "test_budgets", "num_threads")


def _family_of(data) -> tuple:
    members = tuple(m.get("family") for m in (data.get("members") or []))
    return data.get("family"), data.get("env_id"), members


def check_fits(ckpt: dict, path: str, sub, argv: list[str]) -> None:
    """The checkpoint must be of the config's task family (same env, so same shapes), and model flags given on
    the command line must agree with it: the checkpoint fixes the model. Settings that come from the config
    file and differ are taken from the checkpoint, and printed."""
    trained = ckpt.get("datamodule_hyper_parameters") or {}
    hp = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    data = sub.get("data") or {}
    if trained and _family_of(trained) != _family_of(data):
        raise ConfigError(
            f"--ckpt_path {path}: a checkpoint of family {_family_of(trained)[0]!r}"
            f"{' ' + str(trained.get('env_id')) if trained.get('env_id') else ''} (obs_dim {hp.get('obs_dim')}, "
            f"{hp.get('n_actions')} actions); this config's data is family {_family_of(data)[0]!r}"
            f"{' ' + str(data.get('env_id')) if data.get('env_id') else ''}: give the config it was trained with")
    given = {a[len("--model."):].split("=")[0] for a in argv if a.startswith("--model.")}
    model = sub.get("model") or {}
    for key, value in hp.items():
        if key in TEST_SETTINGS or key not in model or model[key] == value:
            continue
        if key in given:
            raise ConfigError(f"--model.{key}: {model[key]!r} contradicts the checkpoint {path}, which was trained "
                              f"with {value!r}; the checkpoint fixes the model (drop the flag)")
        print(f"mamldqn: note: model.{key} taken from the checkpoint: {value!r} (the config says {model[key]!r})",
              file=sys.stderr)


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
    keep_freed_memory()  # a meta-step's large temporaries stay in the heap (mamldqn_pl/memory.py)
    if argv[:1] == ["compare"]:  # not a Lightning stage: several checkpoints into one report
        from mamldqn_pl.compare import main as compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["adapt"]:  # not a Lightning stage: one checkpoint, one task of the user's
        from mamldqn_pl.adapt import main as adapt_main

        return adapt_main(argv[1:])
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
    except MisconfigurationException as err:  # e.g. an accelerator this machine does not have
        print(f"mamldqn: error: trainer: {str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as err:  # diverged: checkpoints written before stay as they were
        print(f"mamldqn: error: {err}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()

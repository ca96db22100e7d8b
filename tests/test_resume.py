"""Exact resume, kills at random moments, divergence and bad checkpoints (issue 5), through the real CLI."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import RESUME_ARGS, ROOT, SMALL_DATA, mamldqn, refused

from mamldqn_pl import MAMLDQN, MetaDQNDataModule, TargetNetworkSync
from mamldqn_pl.checkpoints import AtomicCheckpointIO

# one worker makes this module's shared run once (`make test`: pytest-xdist, --dist loadgroup)
pytestmark = pytest.mark.xdist_group("test_resume")

RESUME = RESUME_ARGS


def params_of(ckpt_path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(ckpt_path, weights_only=True)
    out = dict(ckpt["state_dict"])
    for i, state in ckpt["optimizer_states"][0]["state"].items():
        out.update({f"adam.{i}.{k}": v for k, v in state.items()})
    return out


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "straight"
    out = mamldqn("fit", *RESUME, "--trainer.max_steps", "20", "--run_dir", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    return run


def test_same_seed_gives_bitwise_equal_parameters(straight_run, tmp_path):
    out = mamldqn("fit", *RESUME, "--trainer.max_steps", "20", "--run_dir", str(tmp_path / "again"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert_bitwise_equal(params_of(straight_run / "checkpoints/last.ckpt"),
                         params_of(tmp_path / "again/checkpoints/last.ckpt"))
    other = mamldqn("fit", *RESUME, "--trainer.max_steps", "5", "--seed_everything", "1",
                    "--run_dir", str(tmp_path / "other"))
    assert other.returncode == 0
    a = params_of(tmp_path / "other/checkpoints/last.ckpt")["net.head.weight"]
    assert not torch.equal(a, params_of(straight_run / "checkpoints/last.ckpt")["net.head.weight"])


def test_stop_mid_epoch_and_resume_equals_an_uninterrupted_run(straight_run, tmp_path):
    run = tmp_path / "stopped"
    first = mamldqn("fit", *RESUME, "--trainer.max_steps", "10", "--run_dir", str(run))
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10 and ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1
    # an explicit path this time (LightningCLI reads its hyperparameters too); `last` is used by the kill test
    second = mamldqn("fit", *RESUME, "--trainer.max_steps", "20", "--run_dir", str(run),
                     "--ckpt_path", str(run / "checkpoints/last.ckpt"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert_bitwise_equal(params_of(straight_run / "checkpoints/last.ckpt"), params_of(run / "checkpoints/last.ckpt"))
    straight = torch.load(straight_run / "checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    for key in ("size", "pos", "obs"):
        assert torch.equal(straight["MetaDQNDataModule"]["ranks"][0]["buffers"][key],
                           resumed["MetaDQNDataModule"]["ranks"][0]["buffers"][key])


def test_kills_at_random_moments_always_leave_an_intact_checkpoint(straight_run, tmp_path):
    """SIGKILL training at random moments and the moment a checkpoint write begins; every resume must start
    from an intact checkpoint and carry the step count on."""
    run = tmp_path / "killed"
    shutil.copytree(straight_run, run)
    rng = random.Random(0)
    steps = [20]
    in_write = 0
    for kill in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "mamldqn_pl", "fit", *RESUME, "--trainer.max_steps", "100000",
                                 "--run_dir", str(run), "--ckpt_path", "last"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill % 2:  # the moment a checkpoint write begins
            # up to 120 s, as below: on a loaded machine the start (imports, the resume) alone can take 15 s
            tmp, end = run / "checkpoints/.last.ckpt.tmp", time.monotonic() + 120
            while not tmp.exists() and time.monotonic() < end and proc.poll() is None:
                time.sleep(0.0005)
            in_write += tmp.exists()
        else:  # at a random moment after this run wrote a checkpoint of its own (so it made progress, however
            # loaded the machine is)
            last, end = run / "checkpoints/last.ckpt", time.monotonic() + 120
            written = last.stat().st_mtime_ns
            while last.stat().st_mtime_ns == written and time.monotonic() < end and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)  # intact, or this raises
        assert ckpt["global_step"] >= steps[-1] and ckpt["global_step"] % 5 == 0
        steps.append(ckpt["global_step"])
    assert steps[-1] > 20, steps  # the runs made progress between kills
    assert in_write >= 1  # at least one kill landed while last.ckpt was being written
    final = mamldqn("fit", *RESUME, "--trainer.max_steps", str(steps[-1] + 5), "--run_dir", str(run),
                    "--ckpt_path", "last")
    assert final.returncode == 0, final.stderr[-3000:]
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == steps[-1] + 5


class _DivergesAt(MAMLDQN):
    def __init__(self, bad_step: int, **kw) -> None:
        super().__init__(**kw)
        self.bad_step = bad_step

    def meta_objective(self, batch, with_pre=True):
        loss, pre, post = super().meta_objective(batch, with_pre)
        return (loss * float("nan"), pre, post) if self.global_step == self.bad_step else (loss, pre, post)


def test_nan_stops_the_run_naming_the_step_and_the_last_checkpoint_stays_loadable(tmp_path):
    pl.seed_everything(0)
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=3)
    trainer = pl.Trainer(max_steps=20, limit_train_batches=20, logger=False, enable_progress_bar=False,
                         callbacks=[TargetNetworkSync(), ckpt_cb], plugins=[AtomicCheckpointIO()],
                         default_root_dir=tmp_path, enable_model_summary=False)
    with pytest.raises(FloatingPointError, match="meta-loss nan at meta-step 7"):
        trainer.fit(_DivergesAt(7, hidden=[16]), datamodule=MetaDQNDataModule(**SMALL_DATA))
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["truncated", "corrupted", "malicious", "not_a_checkpoint", "other_config"])
def test_bad_checkpoints_are_refused_in_one_line(kind, straight_run, tmp_path, capsys):
    path = tmp_path / "bad.ckpt"
    good = (straight_run / "checkpoints/last.ckpt").read_bytes()
    extra: list[str] = []
    marker = tmp_path / "pwned"
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "corrupted":
        path.write_bytes(good[:1000] + bytes(b ^ 0x5A for b in good[1000:3000]) + good[3000:])
    elif kind == "malicious":
        exploit = _Exploit()
        exploit.marker = marker
        torch.save({"state_dict": {}, "global_step": 0, "payload": exploit}, path)
        assert not marker.exists()
    elif kind == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(good)
        extra = ["--data.pool_size", "5"]
    code, lines = refused(["fit", *RESUME, "--trainer.max_steps", "30", "--run_dir", str(tmp_path / "r"),
                           "--ckpt_path", str(path), *extra], capsys)
    assert code == 2 and not any("Traceback" in line for line in lines), lines[-20:]
    assert lines[-1].startswith("mamldqn: error:") and ("checkpoint" in lines[-1]), lines[-1]
    assert not marker.exists()  # the pickle's code never ran



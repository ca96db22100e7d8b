"""Multi-process meta-training with Lightning's DDP on CPU (gloo, 2 processes), always through the CLI in a
subprocess: never strategy=ddp inside the pytest process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RESUME_ARGS, ROOT, mamldqn

from mamldqn_pl import MAMLDQN

# one worker makes this module's shared run once (`make test`: pytest-xdist, --dist loadgroup)
pytestmark = pytest.mark.xdist_group("test_ddp")

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
       "--model.grad_clip", "0", "--trainer.callbacks+=ddp_probe.DDPProbe"]


def ddp_fit(run: Path, probe: Path, *args: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "DDP_PROBE_DIR": str(probe)}
    return subprocess.run([sys.executable, "-m", "mamldqn_pl", "fit", *RESUME_ARGS, *DDP, "--run_dir", str(run),
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    out = ddp_fit(base / "run", base / "probe", "--trainer.max_steps", "20")
    assert out.returncode == 0, out.stderr[-4000:]
    return base


def test_all_ranks_hold_bitwise_identical_parameters_after_every_step(ddp_run):
    summary = json.loads((ddp_run / "probe/summary.json").read_text())
    assert summary == {"checks": 20, "max_diff": 0.0, "world_size": 2}


def test_two_rank_meta_gradient_equals_one_rank_on_both_ranks_tasks(ddp_run):
    probe = ddp_run / "probe"
    b0, b1 = (torch.load(probe / f"batch_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(b0["tasks"], b1["tasks"]) or not torch.equal(b0["support"]["obs"], b1["support"]["obs"])
    both = {part: {k: torch.cat([b0[part][k], b1[part][k]]) for k in b0[part]} for part in ("support", "query")}
    hparams = torch.load(ddp_run / "run/checkpoints/last.ckpt", weights_only=True)["hyper_parameters"]
    model = MAMLDQN(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    model.load_state_dict(torch.load(probe / "initial_state.pt", weights_only=True))
    meta_loss, _, _ = model.meta_objective(both)
    meta_loss.backward()
    for r in (0, 1):
        grads = torch.load(probe / f"grads_rank{r}.pt", weights_only=True)
        for name, p in model.net.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=0, atol=1e-6)


def test_checkpoint_holds_every_ranks_state_and_validation_ran_on_both(ddp_run):
    ckpt = torch.load(ddp_run / "run/checkpoints/last.ckpt", weights_only=True)
    state = ckpt["MetaDQNDataModule"]
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    pools = [[t["params"] for t in r["pool"]] for r in state["ranks"]]
    assert pools[0] != pools[1]  # each rank samples its own tasks
    assert all(r["batches"] == 20 for r in state["ranks"])
    history = ckpt["callbacks"]["MetaTestEvaluation"]["history"]
    assert [h["step"] for h in history] == [5, 10, 15, 20]


def test_training_episode_returns_are_logged_over_both_ranks_without_a_hang(ddp_run):
    """The mean of finished training episodes syncs over the ranks (a collective): a rank whose tasks finished no
    episode since the last log must join it too. With the default's random support the ranks' episodes end at
    different steps; before the fix that run hung in the sync."""
    import csv

    rows = list(csv.DictReader(open(ddp_run / "run/metrics.csv")))
    logged = [float(r["train/episode_return"]) for r in rows if r.get("train/episode_return")]
    assert logged and all(v > 0 for v in logged)


def test_resume_with_the_same_world_size_restores_each_rank(ddp_run, tmp_path):
    run = tmp_path / "run"
    first = ddp_fit(run, tmp_path / "p1", "--trainer.max_steps", "10")
    assert first.returncode == 0, first.stderr[-4000:]
    second = ddp_fit(run, tmp_path / "p2", "--trainer.max_steps", "20", "--ckpt_path", "last")
    assert second.returncode == 0, second.stderr[-4000:]
    straight = torch.load(ddp_run / "run/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    for k, v in straight["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k
    for a, b in zip(straight["MetaDQNDataModule"]["ranks"], resumed["MetaDQNDataModule"]["ranks"]):
        assert torch.equal(a["buffers"]["obs"], b["buffers"]["obs"])


def test_resume_with_another_world_size_reseeds_with_a_warning(ddp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ddp_run / "run", run)
    out = mamldqn("fit", *RESUME_ARGS, "--trainer.max_steps", "25", "--run_dir", str(run), "--ckpt_path", "last")
    assert out.returncode == 0, out.stderr[-4000:]
    assert "taken with 2 processes, this run has 1" in out.stderr
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 25

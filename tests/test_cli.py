"""The `mamldqn` command as a user runs it: fit, resume, test and bad input, in subprocesses; each config's
tiny fit and test, and most bad-input cases, through the same entry point in this process."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, mamldqn, refused

from mamldqn_pl.cli import main
from mamldqn_pl.report import SUMMARY_COLUMNS

# `make test` runs the suite on several workers (pytest-xdist, --dist loadgroup): the tests of one module-scoped run
# share a group, so that the run is made once, on one worker.
ON_TRAINED_RUN = pytest.mark.xdist_group("cli_trained_run")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    out = mamldqn("fit", *TINY, "--trainer.max_steps", "20", "--run_dir", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    return run


@ON_TRAINED_RUN
def test_fit_writes_checkpoints_and_tensorboard_and_csv_logs(trained_run):
    assert (trained_run / "checkpoints/best.ckpt").is_file() and (trained_run / "checkpoints/last.ckpt").is_file()
    assert list(trained_run.glob("events.out.tfevents.*"))
    rows = list(csv.DictReader(open(trained_run / "metrics.csv")))
    for key in ("train/meta_loss", "train/query_loss_pre", "train/query_loss_post", "train/epsilon",
                "perf/meta_steps_per_s", "meta_val/return_k0", "meta_val/return_k3", "train/grad_norm",
                "train/q_taken", "train/q_taken_absmax", "train/theta_norm"):
        assert any(r.get(key) for r in rows), key
    assert all(float(r["train/grad_norm"]) > 0 and float(r["train/theta_norm"]) > 0 for r in rows
               if r.get("train/grad_norm"))
    ckpt = torch.load(trained_run / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 20
    assert "datamodule_hyper_parameters" in ckpt
    # the config's meta_val.monitor_k 5: validated at K = 5 too, and best.ckpt is the first best check at K = 5
    checks = [(int(r["step"]), float(r["meta_val/return_k5"])) for r in rows if r.get("meta_val/return_k5")]
    assert [step for step, _ in checks] == [10, 20]
    best_step = max(checks, key=lambda c: c[1])[0]
    assert torch.load(trained_run / "checkpoints/best.ckpt", weights_only=True)["global_step"] == best_step
    assert any("'monitor': 'meta_val/return_k5'" in key for key in ckpt["callbacks"])
    assert ckpt["MetaDQNDataModule"]["ranks"][0]["buffers"]["size"].min() >= 40


@ON_TRAINED_RUN
def test_test_writes_the_report_files(trained_run):
    out = mamldqn("test", *TINY, "--model.test_seeds", "[0, 1]", "--model.test_ks", "[0, 2]",
                  "--model.test_episodes", "1", "--run_dir", str(trained_run))
    assert out.returncode == 0, out.stderr[-3000:]
    with open(trained_run / "adaptation.csv") as f:
        summary = list(csv.DictReader(f))
    assert tuple(summary[0].keys()) == SUMMARY_COLUMNS
    assert {(r["init"], r["group"], r["budget"], r["k"]) for r in summary} == {
        (i, g, b, k) for i in ("meta-init", "scratch") for g in ("all", "flip", "noflip")
        for b in ("5", "10", "20", "40") for k in ("0", "2")}  # budgets: adapt_budget 20 x (1/4, 1/2, 1, 2)
    assert all(r["n"] == ("8" if r["group"] == "all" else "4") for r in summary)  # 4 tasks x 2 seeds
    report = json.loads((trained_run / "adaptation.json").read_text())
    assert len(report["rows"]) == 2 * 4 * 2 * 2 * 4 and report["meta"]["ckpt_path"].endswith("best.ckpt")
    assert (trained_run / "adaptation.png").stat().st_size > 10_000
    assert (trained_run / "adaptation.md").read_text().startswith("| init | group | budget | K |")
    assert "| meta-init | all | 20 | 2 |" in out.stdout


@ON_TRAINED_RUN
def test_resume_from_last_continues_the_step_count_and_keeps_the_logs(trained_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    lines_before = len(open(run / "metrics.csv").readlines())
    out = mamldqn("fit", *TINY, "--trainer.max_steps", "30", "--run_dir", str(run), "--ckpt_path", "last")
    assert out.returncode == 0, out.stderr[-3000:]
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 30
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) >= lines_before and int(rows[-1]["step"]) >= 25


@ON_TRAINED_RUN
def test_a_fresh_fit_never_overwrites_an_existing_run(trained_run):
    stamp = (trained_run / "checkpoints/last.ckpt").stat().st_mtime
    out = mamldqn("fit", *TINY, "--trainer.max_steps", "10", "--run_dir", str(trained_run))
    assert out.returncode == 2 and "already holds a run" in out.stderr and "Traceback" not in out.stderr
    assert (trained_run / "checkpoints/last.ckpt").stat().st_mtime == stamp


def test_resume_without_a_checkpoint_says_so(tmp_path):
    out = mamldqn("fit", *TINY, "--run_dir", str(tmp_path / "nothing"), "--ckpt_path", "last")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("mamldqn: error: --ckpt_path last: no checkpoint")


@pytest.mark.parametrize("args, needle", [
    (["--data.ranges", '{"pole_length": [0.1, 1.0]}'], "unknown task parameter 'pole_length'"),
    (["--data.ranges", '{"length": [1.0, 0.2]}'], "range [1.0, 0.2] is inverted"),
    (["--data.ranges", '{"length": []}'], "must be [low, high]"),
    (["--data.tasks_per_batch", "7"], "data.tasks_per_batch: 7 exceeds the task pool"),
    (["--model.inner_lr", "0"], "model.inner_lr: 0.0 must be > 0"),
    (["--model.meta_lr", "-0.001"], "model.meta_lr: -0.001 must be > 0"),
    (["--model.adam_eps", "0"], "model.adam_eps: 0.0 must be > 0"),
    (["--model.weight_noise", "-0.1"], "model.weight_noise: -0.1 must be >= 0"),
    (["--model.inner_steps", "-1"], "model.inner_steps: -1 must be >= 0"),
    (["--data.family", "pendulum"], "unknown family 'pendulum'"),
    (["--target_sync.tau", "0"], "set exactly one of tau"),
    (["--data.learning_starts", "10"], "data.learning_starts: 10 is below support_size + query_size"),
    (["--trainer.max_steps", "0"], "trainer.max_steps: 0 must be >= 1"),
    (["--model.ema_decay", "1"], "model.ema_decay: 1.0 must lie in [0, 1)"),
    (["--model.meta_lr_schedule", "step"], "model.meta_lr_schedule"),
    (["--model.meta_lr_min", "0.5"], "model.meta_lr_min: 0.5 must lie in [0, meta_lr]"),
    (["--data.collect_adapted", "1.5"], "data.collect_adapted: 1.5 must lie in [0, 1]"),
    (["--data.n_step", "0"], "data.n_step: 0 must be an integer >= 1"),
    (["--data.collect_adapted_per", "episode"], "data.collect_adapted_per: 'episode'; allowed: meta_step, task"),
    (["--data.collection", "thread"], "data.collection: 'thread'; allowed: current, ahead, process"),
    (["--trainer.accelerator", "gpu"] if not torch.cuda.is_available() else ["--trainer.accelerator", "tpu"],
     "mamldqn: error: trainer:"),
    # unknown keys and wrong types (jsonargparse's message, folded onto one line)
    (["--model.inner_stepz", "3"], "unrecognized arguments: --model.inner_stepz"),
    (["--data.bogus", "1"], "unrecognized arguments: --data.bogus"),
    (["--model.inner_steps", "three"], 'Parser key "model.inner_steps"'),
    (["--data.flip", "maybe"], 'Parser key "data.flip"'),
    (["--model.adapt", "middle"], 'Parser key "model.adapt"'),
    (["--model.td_loss", "l1"], 'Parser key "model.td_loss"'),
    (["--model.hidden", "wide"], 'Parser key "model.hidden"'),
    (["--data.ranges", "[1, 2]"], 'Parser key "data.ranges"'),
    (["--config", "configs/does_not_exist.yaml"], "does_not_exist.yaml"),
    # out-of-range numbers and inconsistent sizes
    (["--model.gamma", "1.5"], "model.gamma: 1.5 must lie in [0, 1]"),
    (["--model.epsilon_start", "-0.1"], "model.epsilon_start: -0.1 must lie in [0, 1]"),
    (["--model.grad_clip", "-1"], "model.grad_clip: -1.0 must be >= 0"),
    (["--model.num_threads", "0"], "model.num_threads: 0 must be >= 1"),
    (["--model.hidden", "[16, 0]"], "model.hidden: [16, 0] must be positive widths"),
    (["--model.test_ks", "[0, -3]"], "model.test_ks: [0, -3] must be >= 0"),
    (["--data.epsilon_adapt", "2"], "data.epsilon_adapt: 2.0 must lie in [0, 1]"),
    (["--data.support_size", "0"], "data.support_size: 0 must be an integer >= 1"),
    (["--data.pool_size", "0"], "data.pool_size: 0 must be an integer >= 1"),
    (["--data.collect_steps", "0"], "data.collect_steps: 0 must be an integer >= 1"),
    (["--data.buffer_capacity", "30"], "data.buffer_capacity: 30 is below data.learning_starts = 40"),
    (["--data.adapt_budget", "50"], "data.learning_starts: 40 is below data.adapt_budget = 50"),
    (["--data.retire_after", "30"], "data.retire_after: 30 must be 0 (never) or above learning_starts"),
    (["--data.val_seed", "2"], "data seeds must differ"),
    (["--data.ranges", '{"masscart": [0, 1]}'], "data.ranges.masscart: range [0.0, 1.0] must lie above 0.0"),
    (["--data.test_ranges", '{"length": [2, 1]}'], "data.test_ranges.length: range [2.0, 1.0] is inverted"),
    (["--target_sync.tau", "1.5"], "target_sync.tau: 1.5 must lie in [0, 1]"),
    (["--target_sync.tau_final", "0.01"], "target_sync.tau_final: 0.01 must lie in (0, tau = 0.005]"),
    (["--target_sync.tau", "0.01", "--target_sync.every_n_steps", "10"], "set exactly one of tau"),
    (["--meta_val.every_n_steps", "0"], "meta_val.every_n_steps: 0 must be >= 1"),
    (["--meta_val.episodes", "0"], "meta_val.episodes: 0 must be >= 1"),
    (["--meta_val.monitor_k", "-1"], "meta_val.monitor_k: -1 must be >= 0"),
    (["--model.advantage_learning", "1"], "model.advantage_learning: 1.0 must lie in [0, 1)"),
])
def test_bad_input_is_one_line_naming_the_value(args, needle, tmp_path, capsys):
    code, err = refused(["fit", *TINY, "--run_dir", str(tmp_path / "bad"), *args], capsys)
    assert code == 2
    assert err[-1].startswith("mamldqn: error:") and needle in err[-1], err[-1]
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    out = mamldqn("fit", *TINY, "--run_dir", str(tmp_path / "bad"), "--model.inner_steps", "-2")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "mamldqn: error: model.inner_steps: -2 must be >= 0"


CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if p.stem != "cartpole")


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_fits_and_tests(config, tmp_path):
    """Each config's tiny `fit`, then its `test`, through the CLI's entry point in this process (a subprocess
    would spend most of the test importing Lightning; the subprocess path is tested on the trained run above);
    one test per config, so that `make test`'s workers share them out."""
    args = ["--config", str(ROOT / f"configs/{config}.yaml"), *TINY[2:], "--run_dir", str(tmp_path / config)]
    main(["fit", *args, "--trainer.max_steps", "10"])  # a failure raises, or exits non-zero with its one line
    main(["test", *args, "--model.test_seeds", "[0]", "--model.test_ks", "[0, 1]", "--model.test_episodes", "1"])
    summary = list(csv.DictReader(open(tmp_path / config / "adaptation.csv")))
    assert {r["init"] for r in summary} == {"meta-init", "scratch"}

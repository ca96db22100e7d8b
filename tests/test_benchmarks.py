"""Smoke versions of the experiment scripts: they run end to end on a tiny config and write what they promise."""

import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "benchmarks"))  # runs, same_run: imported by tests below


def script(name: str, args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """`python benchmarks/NAME.py ARGS` as its main() in this process (a subprocess would spend most of a small
    run importing Lightning): the exit code, stdout and stderr. A SystemExit message goes to stderr with code
    1, as Python does it for a script."""
    module = __import__(name)
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{name}.py", *args])
    monkeypatch.chdir(ROOT)
    code = 0
    try:
        module.main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) or exit_.code is None else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    out = capsys.readouterr()
    return code or 0, out.out, out.err


def test_seeds_benchmark_writes_one_row_per_seed_checkpoint_and_k(tmp_path, monkeypatch, capsys):
    extra = " ".join(TINY[2:]) + " --trainer.max_steps 20"  # TINY without its --config
    out = subprocess.run([sys.executable, "benchmarks/seeds.py", "--ablation", "--variants", "default",
                          "no_adapted_collection", "--seeds", "0", "1", "--runs", str(tmp_path / "runs"),
                          "--out", str(tmp_path / "out"), "--extra-args", extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "ablation.csv")))
    # 2 variants x (2 seeds + pooled) x (best, last) x K in 0, 1, 3, 5
    assert len(rows) == 2 * 3 * 2 * 4
    assert {r["variant"] for r in rows} == {"default", "no_adapted_collection"}
    assert {r["seed"] for r in rows} == {"0", "1", "pooled"}
    per_seed = [r for r in rows if r["seed"] != "pooled"]
    assert all(r["ckpt_step"] in ("10", "20") for r in per_seed if r["checkpoint"] == "best")
    assert all(r["ckpt_step"] == "20" for r in per_seed if r["checkpoint"] == "last")
    assert all(float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) for r in rows)
    # the validation spread is at the row's K where the run validated at it (0, 3 and the config's monitor_k 5)
    assert {(r["k"], r["val_k"]) for r in per_seed} == {("0", "0"), ("1", "3"), ("3", "3"), ("5", "5")}
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 10_000
    profile = list(csv.DictReader(open(tmp_path / "out" / "ablation_val_k.csv")))
    assert len(profile) == 2 * 2 * 9 and {r["k"] for r in profile} == {str(k) for k in range(9)}
    assert "| default (2 seeds) |" in (tmp_path / "out" / "ablation.md").read_text()
    # the validation-only screen of the same runs (one variant given as a reference from the same folder)
    code, _, err = script("val_screen", ["--runs", str(tmp_path / "runs"), "--variants", "no_adapted_collection",
                                         "--reference", str(tmp_path / "runs"), "default", "--name", "screen", "--out",
                                         str(tmp_path / "out")], monkeypatch, capsys)
    assert code == 0, err[-3000:]
    screen = list(csv.DictReader(open(tmp_path / "out" / "screen.csv")))
    other = "no_adapted_collection"
    assert [(r["variant"], r["seed"]) for r in screen] == [("default", "0"), ("default", "1"), (other, "0"),
                                                           (other, "1"), ("default", "mean of 2"), (other, "mean of 2")]
    for r in screen[:4]:  # checks every 10 steps of 20: the final third (> 13.3) holds the check at 20 alone
        curve = [(int(x["step"]), float(x["meta_val/return_k5"])) for x in csv.DictReader(
            open(tmp_path / "runs" / f"{r['variant']}_s{r['seed']}" / "metrics.csv")) if x.get("meta_val/return_k5")]
        assert r["last_step"] == "20" and float(r["last_check"]) == curve[-1][1] == float(r["final_third_mean"])
        assert float(r["best_check"]) == max(v for _, v in curve)
    assert "| no_adapted_collection | 0, 1 | 20-20 of 20 |" in (tmp_path / "out" / "screen.md").read_text()


def test_families_benchmark_writes_meta_init_multitask_and_scratch_rows(tmp_path, monkeypatch, capsys):
    # mountaincar_flip: a family with a flip (both groups) whose episodes end at 200 steps, not Acrobot's 500
    # {seed} in --extra-args becomes each run's training seed (model.test_seeds: read by `mamldqn test` only)
    extra = " ".join(TINY[2:]) + " --trainer.max_steps 20 --model.test_seeds [{seed}]"
    out = subprocess.run([sys.executable, "benchmarks/families.py", "--configs", "mountaincar_flip",
                          "--seeds", "0", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                          "--extra-args", extra,
                          "--meta-extra-args", "--model.td_normalize true",
                          "--multitask-extra-args", "--model.ema_decay 0.5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "families.csv")))
    assert {r["init"] for r in rows} == {"meta-init", "multitask", "scratch"}
    assert {(r["init"], r["checkpoint"]) for r in rows} == {("meta-init", "best"), ("meta-init", "last"),
                                                             ("multitask", "best"), ("multitask", "last"),
                                                             ("scratch", "-")}  # last beside best, every run
    assert {r["group"] for r in rows} == {"all", "flip", "noflip"}
    assert {r["k"] for r in rows} == {"0", "1", "3", "5"}
    assert all(r["config"] == "mountaincar_flip" and r["budget"] == "20" for r in rows)
    pooled = [r for r in rows if r["init"] != "scratch"]
    assert all(r["n"] == str(2 * 4 * 3) for r in pooled if r["group"] == "all")  # 2 seeds x 4 tasks x 3 eval seeds
    assert all(float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) for r in rows)
    assert all(r["chosen_k"] in ("0", "1", "3", "5") for r in rows)
    multitask = yaml.safe_load((tmp_path / "runs" / "mountaincar_flip_multitask_s1" / "config.yaml").read_text())
    assert multitask["model"]["algorithm"] == "multitask" and multitask["model"]["adapt"] == "head"
    assert not multitask["model"]["td_normalize"]  # --meta-extra-args reach the meta-init's runs only
    meta = yaml.safe_load((tmp_path / "runs" / "mountaincar_flip_meta-init_s1" / "config.yaml").read_text())
    assert meta["model"]["td_normalize"] and meta["data"]["adapt_budget"] == 20
    assert multitask["model"]["ema_decay"] == 0.5 and meta["model"]["ema_decay"] == 0.0  # and the multitask's theirs
    assert multitask["model"]["test_seeds"] == meta["model"]["test_seeds"] == [1]
    assert yaml.safe_load((tmp_path / "runs" / "mountaincar_flip_meta-init_s0" / "config.yaml").read_text())[
        "model"]["test_seeds"] == [0]
    assert "| mountaincar_flip | meta-init (2 seeds) |" in (tmp_path / "out" / "families.md").read_text()
    assert (tmp_path / "out" / "families.png").stat().st_size > 10_000
    # the validation tasks' returns per group of the same runs' checkpoints: their mean over the (balanced) groups
    # is the validation return the run logged at that step (meta_val's protocol, replayed)
    code, out_, err = script("val_groups", ["--runs", str(tmp_path / "runs"), "--variants",
                                            "mountaincar_flip_meta-init", "--name", "groups", "--out",
                                            str(tmp_path / "out"), "--episodes", "1"], monkeypatch, capsys)
    assert code == 0, err[-3000:]
    groups = list(csv.DictReader(open(tmp_path / "out" / "groups.csv")))
    assert {(r["seed"], r["checkpoint"]) for r in groups} == {(s, c) for s in "01" for c in ("best", "last")}
    assert {r["group"] for r in groups} == {"flip", "noflip"} and {r["k"] for r in groups} == {"0", "1", "3", "5"}
    for seed in "01":
        logged = [x for x in csv.DictReader(open(tmp_path / "runs" / f"mountaincar_flip_meta-init_s{seed}" /
                                                 "metrics.csv")) if x.get("meta_val/return_k5")]
        last = [float(r["mean"]) for r in groups if (r["seed"], r["checkpoint"], r["k"]) == (seed, "last", "5")]
        assert int(logged[-1]["step"]) == 20 and len(last) == 2
        assert sum(last) / 2 == pytest.approx(float(logged[-1]["meta_val/return_k5"]), abs=1e-3)
    assert "| mountaincar_flip_meta-init | 1 | last | 20 |" in out_
    assert (tmp_path / "out" / "groups.png").stat().st_size > 10_000
    (tmp_path / "out" / "groups.md").unlink()
    code, again, err = script("val_groups", ["--name", "groups", "--out", str(tmp_path / "out"), "--table-only"],
                              monkeypatch, capsys)
    assert code == 0 and again == out_, err[-3000:]  # the table, rewritten from the csv alone


def test_speed_benchmark_quick_prints_every_row():
    out = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| (")]
    for part in ("(a)", "(b)", "(c)", "(c')", "(d)", "(e)", "(e')"):
        assert any(r.startswith(f"| {part} ") for r in rows), part
    fast = [r for r in rows if r.startswith("| (e) ")]
    assert len(fast) == 4 and all("grad err" in r for r in fast)
    errors = [float(r.split("grad err ")[1].split(" ")[0]) for r in fast]
    assert max(errors) <= 1e-5  # the fast paths' meta-gradients equal the reference's


# a smaller meta-test for the make_run_speed smoke run: two tasks of each set, one seed, one episode
SMALL_PROTOCOL = ("--data.n_val_tasks 2 --data.n_test_tasks 2 --meta_val.episodes 1 --meta_val.seeds [0] "
                  "--model.test_seeds [0] --model.test_episodes 1 --model.test_ks [0,5]")


# both make a git worktree of this repository, and the first checks that its own is gone again: one worker
ON_WORKTREES = pytest.mark.xdist_group("worktrees")


@ON_WORKTREES
def test_a_grouped_test_carries_its_group_under_make_tests_loadgroup(request):
    """`make test` runs pytest-xdist with --dist loadgroup: a grouped test's node id carries its group, which is
    what keeps the group on one worker and a module-scoped run made once (lost silently with pytest 9.2 and
    pytest-xdist 3.8: pyproject.toml pins pytest below it)."""
    if not request.config.getoption("loadgroup", False):
        pytest.skip("not under pytest-xdist's --dist loadgroup")
    assert request.node.nodeid.endswith("@worktrees"), request.node.nodeid


@ON_WORKTREES
def test_make_run_speed_times_both_trees_and_reads_their_reports(tmp_path):
    own_tmp = tmp_path / "tmp"  # its temporary folders, the baseline's worktree among them, land here
    own_tmp.mkdir()
    out = subprocess.run([sys.executable, "benchmarks/make_run_speed.py", "--baseline", "HEAD", "--steps", "10",
                          "--out", str(tmp_path), "--keep", str(tmp_path / "kept"), "--sequential",
                          "--extra-args", "--data.collection process --trainer.accelerator cpu",
                          "--common-args", SMALL_PROTOCOL], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TMPDIR": str(own_tmp)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "kept" / "adaptation.csv").is_file() and (tmp_path / "kept" / "checkpoints/last.ckpt").is_file()
    rows = list(csv.DictReader(open(tmp_path / "make_run_speed.csv")))
    assert [r["tree"] for r in rows] == ["baseline", "this commit", "this commit, flags"]
    assert rows[2]["commit"].endswith(", --data.collection process --trainer.accelerator cpu")  # a third run
    kept = torch.load(tmp_path / "kept" / "checkpoints/last.ckpt", weights_only=False)
    assert kept["datamodule_hyper_parameters"]["collection"] == "process"
    assert kept["datamodule_hyper_parameters"]["n_test_tasks"] == 2  # --common-args reach every run
    assert rows[0]["ratio_to_baseline"] == "1.0" and float(rows[1]["ratio_to_baseline"]) > 0
    assert all(float(r["fit_s"]) > 0 and float(r["test_s"]) > 0 for r in rows)
    assert all(float(r["k5_ci_low"]) <= float(r["k5_mean"]) <= float(r["k5_ci_high"]) for r in rows)
    worktrees = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True,
                               text=True).stdout.splitlines()
    # the baseline's worktree is gone again (another test's, same_run's, may exist meanwhile: not under own_tmp)
    assert not [w for w in worktrees if w.startswith("worktree ") and str(own_tmp) in w], worktrees


def test_inner_step_diagnosis_measures_each_k_and_rate(tmp_path, monkeypatch, capsys):
    """The scripts run in this process (`script`); the fit through the CLI's entry point."""
    from mamldqn_pl.cli import main
    run = tmp_path / "run"
    main(["fit", *TINY, "--trainer.max_steps", "20", "--run_dir", str(run)])
    ckpt = run / "checkpoints" / "last.ckpt"
    code, _, err = script("inner_step_diagnosis", [
        f"trained={ckpt}", f"small={ckpt}@0.001", f"sgd={ckpt}@sgd0.001", "--ks", "0", "1", "3", "--budget", "20",
        "--out", str(tmp_path / "diag")], monkeypatch, capsys)  # the trained budget, given: as if not given (below)
    assert code == 0, err[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "diag.csv")))
    assert [(r["name"], r["k"]) for r in rows] == [(n, k) for n in ("trained", "small", "sgd") for k in ("0", "1", "3")]
    trained, small = rows[:3], rows[3:6]
    assert [dict(r, name="") for r in rows[6:]] == [dict(r, name="") for r in small]  # @sgdLR: SGD at rate LR
    assert all(float(r["greedy_changed"]) == 0.0 for r in (trained[0], small[0]))
    for key in ("support_td_loss", "signed_td_error", "action_gap_k0", "return"):  # K = 0: the same support data
        assert trained[0][key] == small[0][key]
    assert abs(float(trained[0]["step_curvature"]) / float(small[0]["step_curvature"]) - 50.0) < 1e-3
    assert (tmp_path / "diag.png").stat().st_size > 10_000
    from inner_step_diagnosis import diagnose  # in this process (no second Lightning import): --ks and --budget

    sweep = diagnose("trained", str(ckpt), ks=(0, 3, 7))
    assert [r["k"] for r in sweep] == [0, 3, 7]
    assert sweep[1]["support_td_loss"] == float(trained[2]["support_td_loss"])  # K = 3 is K = 3, whatever else is asked
    assert sweep[0]["action_gap_k0"] == float(trained[0]["action_gap_k0"])
    (small_support,) = diagnose("trained", str(ckpt), ks=(0,), budget=7)  # 7 support steps, not the trained 20
    assert small_support["action_gap_k0"] != sweep[0]["action_gap_k0"]
    # val_noise.py on the same checkpoint: sigma 0 is the unperturbed return, bitwise, in every draw
    code, _, err = script("val_noise", [f"trained={ckpt}", "--k", "1", "--sigmas", "0", "0.05", "--draws", "2",
                                        "--out", str(tmp_path / "noise")], monkeypatch, capsys)
    assert code == 0, err[-3000:]
    zero, noisy = list(csv.DictReader(open(tmp_path / "noise.csv")))
    assert zero["std"] == "0.0" and zero["mean"] == zero["unperturbed"] == zero["min"] == zero["max"]
    assert float(noisy["min"]) <= float(noisy["mean"]) <= float(noisy["max"]) and noisy["draws"] == "2"
    code, _, err = script("val_noise", ["no_label.ckpt"], monkeypatch, capsys)
    assert code != 0 and "give LABEL=PATH" in err
    # failure_modes.py: the same validation return, and every early end has a cause (CartPole ends on no other)
    code, _, err = script("failure_modes", [f"trained={ckpt}", "--k", "1", "--targets-from", f"itself={ckpt}",
                                            "--out", str(tmp_path / "failures")], monkeypatch, capsys)
    assert code == 0, err[-3000:]
    row, itself = csv.DictReader(open(tmp_path / "failures.csv"))
    assert (row["targets_from"], itself["targets_from"]) == ("trained", "itself")
    assert {k: v for k, v in row.items() if k != "targets_from"} == {k: v for k, v in itself.items()
                                                                     if k != "targets_from"}
    assert abs(float(row["val_return"]) - float(zero["unperturbed"])) < 0.05 + 1e-9  # val_noise rounds to 0.1
    assert 0 < int(row["ended_early"]) <= int(row["episodes"])  # a 40-step run's policies do not last 500 steps
    assert float(row["cart_off_track"]) + float(row["pole_fallen"]) >= 1.0
    assert float(row["v_left"]) != float(row["v_right"])
    code, _, err = script("failure_modes", [f"trained={tmp_path / 'missing.ckpt'}"], monkeypatch, capsys)
    assert code != 0 and "missing.ckpt" in err and "Traceback" not in err


def test_pool_composition_replays_the_task_stream_and_writes_the_shares(tmp_path):
    config = {"trainer": {"max_steps": 60}, "data": {
        "family": "cartpole", "flip": True, "pool_size": 6, "tasks_per_batch": 3, "support_size": 16, "query_size": 16,
        "learning_starts": 40, "adapt_budget": 20, "buffer_capacity": 100, "retire_after": 60, "collect_adapted": 0.5,
        "collect_adapted_per": "task", "n_val_tasks": 2, "n_test_tasks": 4}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run([sys.executable, "benchmarks/pool_composition.py", "--config", str(tmp_path / "tiny.yaml"),
                          "--seeds", "0", "1", "--window", "20", "--check-steps", "60", "--runs", str(tmp_path),
                          "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]  # the replay with random Q-values gave the same stream
    rows = list(csv.DictReader(open(tmp_path / "out" / "pool_composition.csv")))
    assert [(r["seed"], r["window_end"]) for r in rows] == [(s, e) for s in "01" for e in ("20", "40", "60")]
    for r in rows:  # 3 adapted slots and 3 theta slots: the pool's share is their mean
        pool, adapted, theta = (float(r[c]) for c in ("pool_flipped", "adapted_slots_flipped", "theta_slots_flipped"))
        assert 0 <= adapted <= 1 and 0 <= theta <= 1 and abs(pool - (adapted + theta) / 2) < 1e-9
    assert len({r["pool_flipped"] for r in rows}) > 1  # tasks retire and the pool changes


def test_theta_trace_leaves_the_run_bitwise_and_val_noise_reads_its_moves(tmp_path, monkeypatch, capsys):
    """The fits through the CLI's entry point in this process (benchmarks/ is on sys.path: theta_trace imports),
    val_noise.py as `script`."""
    from mamldqn_pl.cli import main

    runs = {}
    for name, extra in (("plain", []), ("traced", ["--trainer.callbacks+=theta_trace.ThetaTrace",
                                                   "--trainer.callbacks.path", str(tmp_path / "traced/theta_trace.pt"),
                                                   "--trainer.callbacks.every_n_steps", "10"])):
        main(["fit", *TINY, "--trainer.max_steps", "30", "--run_dir", str(tmp_path / name), *extra])
        runs[name] = torch.load(tmp_path / name / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(runs["plain"][k], runs["traced"][k]) for k in runs["plain"])
    trace = torch.load(tmp_path / "traced/theta_trace.pt", weights_only=True)
    assert sorted(trace) == [10, 20, 30]
    assert all(torch.equal(v, runs["traced"][f"net.{k}"]) for k, v in trace[30].items())
    code, _, err = script("val_noise", ["--trace", str(tmp_path / "traced"), "--draws", "2", "--out",
                                        str(tmp_path / "trace")], monkeypatch, capsys)
    assert code == 0, err[-3000:]
    (row,) = list(csv.DictReader(open(tmp_path / "trace.csv")))  # the final third of 30 steps: checks 20 -> 30
    assert (row["from_step"], row["to_step"]) == ("20", "30") and float(row["move"]) > 0
    assert abs(float(row["change"]) - (float(row["val_to"]) - float(row["val_from"]))) <= 0.11
    ckpt = tmp_path / "traced/checkpoints/last.ckpt"
    code, _, err = script("val_noise", [f"t={ckpt}", "--relative", "--fixed-support", "--sigmas", "0", "--draws",
                                        "2", "--k", "1", "--out", str(tmp_path / "rel")], monkeypatch, capsys)
    assert code == 0, err[-3000:]
    (zero,) = list(csv.DictReader(open(tmp_path / "rel.csv")))
    assert zero["std"] == "0.0" and zero["mean"] == zero["unperturbed"]


def test_generated_tables_land_between_their_markers_in_the_readme_or_a_docs_page(tmp_path, monkeypatch, capsys):
    import runs

    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("intro\n<!-- a.md -->\nold a\n<!-- /a.md -->\nend\n")
    (tmp_path / "docs" / "experiments.md").write_text("<!-- b.md -->\n<!-- /b.md -->\n")
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    runs.readme_table("a", "| new a |")
    runs.readme_table("b", "| new b |")
    runs.readme_table("c", "| nowhere |")  # no markers: nothing is written anywhere, and it says so
    assert "no <!-- c.md --> markers" in capsys.readouterr().out
    assert (tmp_path / "README.md").read_text() == "intro\n<!-- a.md -->\n| new a |\n<!-- /a.md -->\nend\n"
    assert (tmp_path / "docs" / "experiments.md").read_text() == "<!-- b.md -->\n| new b |\n<!-- /b.md -->\n"


def test_a_run_folder_is_reused_only_by_the_settings_that_made_it(tmp_path):
    """The default config changed in the eleventh session: a finished run of the old one must not stand in for a
    run of the new one under the same folder name."""
    import runs

    run = tmp_path / "default_s0"
    run.mkdir()
    (run / "fit_done").write_text("12.5")
    (run / "fit_args.json").write_text('["--config", "configs/cartpole.yaml", "--seed_everything", "0"]')
    assert runs.train(ROOT / "configs/cartpole.yaml", 0, run) == 12.5  # the same settings: reused, not retrained
    try:
        runs.train(ROOT / "configs/cartpole_init_support.yaml", 0, run)
    except SystemExit as e:
        assert "made by `mamldqn fit --config configs/cartpole.yaml --seed_everything 0`" in str(e)
        assert "configs/cartpole_init_support.yaml" in str(e) and "another --runs folder" in str(e)
    else:
        raise AssertionError("a run folder made by another config was reused")
    try:
        runs.train(ROOT / "configs/cartpole.yaml", 1, run)  # another seed is other settings too
    except SystemExit as e:
        assert "--seed_everything 1" in str(e)
    else:
        raise AssertionError("a run folder made with another seed was reused")


def test_seeds_benchmark_refuses_a_config_for_the_ablation_or_a_missing_one_in_one_line(monkeypatch, capsys):
    for args, message in ((["--ablation", "--config", "configs/cartpole.yaml"],
                           "--config configs/cartpole.yaml: the ablation variants are settings on "
                           "cartpole_init_support.yaml, so --config is allowed only without --ablation"),
                          (["--config", "configs/nope.yaml"],
                           "--config configs/nope.yaml: no such file (a config in configs/, e.g. "
                           "configs/cartpole.yaml)")):
        code, _, err = script("seeds", args, monkeypatch, capsys)
        assert code != 0 and err.strip() == message


def test_bare_step_caches_times_stored_and_fresh_batches_each_round(monkeypatch, capsys):
    code, out, err = script("bare_step_caches", ["--rounds", "2", "--batches", "2", "--fit-steps", "12"], monkeypatch,
                            capsys)
    assert code == 0, err[-3000:]
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:] for line in out.splitlines()
            if line.startswith("| stored") or line.startswith("| fresh")}
    assert set(rows) == {"stored", "fresh", "fresh - stored"}
    stored, fresh = ([float(v) for v in rows[k][0].split()] for k in ("stored", "fresh"))
    assert len(stored) == len(fresh) == 2 and min(stored + fresh) > 0  # one figure per round, each a time
    diffs = [float(v) for v in rows["fresh - stored"][0].split()]
    assert all(abs(d - (f - s)) < 0.151 for d, s, f in zip(diffs, stored, fresh))  # three roundings of 0.05


def test_profile_step_lists_the_fast_steps_operators_per_step():
    out = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--steps", "2", "--rows", "40"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split(" | ") for line in out.stdout.splitlines() if line.startswith("| aten::")]
    names = {r[0].removeprefix("| ") for r in rows}
    # the body's products, its ReLUs (in place since meta.body) and the written-out head's batched products
    assert {"aten::addmm", "aten::clamp_min_", "aten::bmm"} <= names, names
    assert all(float(r[1]) >= 0 and float(r[3].removesuffix(" |")) > 0 for r in rows)
    assert "ms a step" in out.stdout.splitlines()[0]


def test_profile_fit_times_the_data_side_and_the_meta_step_of_a_fit():
    extra = " ".join(TINY[2:]) + " --trainer.limit_train_batches 10"  # TINY without its --config
    out = subprocess.run([sys.executable, "benchmarks/profile_fit.py", "--steps", "20", "--extra-args", extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:] for line in out.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| part")}
    assert out.stdout.startswith("20 meta-steps in")
    for part in ("MAMLDQN.training_step", "MetaDQNDataModule.next_batch", "MetaDQNDataModule._warm_start",
                 "MetaDQNDataModule._collect", "Adam.step"):
        assert float(rows[part][0]) > 0, part
    assert rows["MAMLDQN.training_step"][1].strip(" |") == "20"  # one call a meta-step
    assert rows["MetaDQNDataModule._make_batch"][1].strip(" |") == "20"
    assert any(name.startswith("rest") for name in rows)


@ON_WORKTREES
def test_same_run_finds_equal_runs_equal_and_names_what_differs(tmp_path, monkeypatch, capsys):
    extra = " ".join(TINY[2:])  # TINY without its --config
    out = subprocess.run([sys.executable, "benchmarks/same_run.py", "--baseline", "HEAD", "--steps", "10",
                          "--extra-args", extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    assert last.startswith("configs/cartpole.yaml, 10 steps, HEAD against this tree: "), last
    # the working tree runs HEAD's code unless the package or its configs have uncommitted changes (a clean clone,
    # as in CI, has none): then the two runs are one run
    changed = subprocess.run(["git", "status", "--porcelain", "--", "mamldqn_pl", "configs"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
    if not changed:
        assert out.returncode == 0 and ": bitwise equal (" in last, last
    from same_run import differences

    from mamldqn_pl.cli import main
    for seed in (0, 1):
        main(["fit", *TINY, "--trainer.max_steps", "6", "--seed_everything", str(seed), "--run_dir",
              str(tmp_path / f"s{seed}")])
    a, b = (tmp_path / f"s{seed}" / "checkpoints" / "last.ckpt" for seed in (0, 1))
    assert differences(a, a) == []
    diff = differences(a, b)  # another seed: other weights, other tasks in the pool
    assert "state_dict/net.head.weight: differs" in diff and any(d.startswith("MetaDQNDataModule/") for d in diff)
    shutil.copytree(tmp_path / "s0", tmp_path / "copied")  # its checkpoint callback still names the first folder
    import same_run

    for other, code in ((tmp_path / "copied" / "checkpoints" / "last.ckpt", 0), (b, 1)):
        monkeypatch.setattr(sys, "argv", ["same_run.py", "--compare", str(a), str(other)])
        with pytest.raises(SystemExit) as exit_info:
            same_run.main()
        assert exit_info.value.code == code
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert (": bitwise equal (" if code == 0 else " tensors differ (") in last, last


def test_reference_policy_climbs_every_mountaincar_task_of_the_mixed_config(tmp_path):
    """benchmarks/reference_policies.py: energy pumping on the config's own MountainCar tasks (the mixed config's
    MountainCar member only), one row per task set, task and evaluation seed, on gymnasium's env with the task's
    constants; it reaches the goal (return above -200) on every one, which a policy that ignores the velocity does
    not."""
    import reference_policies

    rows = reference_policies.rows_of("seed_cartpole_mountaincar_dynamics", episodes=1, seeds=(0,))
    assert {r["init"] for r in rows} == {"seed_cartpole_mountaincar_dynamics/val",
                                         "seed_cartpole_mountaincar_dynamics/test"}
    assert len(rows) == (16 + 20) // 2 and all(-200 < r["return"] < -60 for r in rows)
    from mamldqn_pl import MetaDQNDataModule

    dm = MetaDQNDataModule(family="mixed", members=[{"family": "cartpole", "flip": False}, {"family": "mountaincar"}])
    task = next(t for t in dm.test_tasks if t.member == 1)
    env = dm.family.members[1].make_env(task)
    assert reference_policies.play(env, lambda obs: 2, 0) == -200.0  # always right: never over the hill
    reference_policies.main(["--configs", "mountaincar", "--out", str(tmp_path), "--name", "ref"])
    assert "| mountaincar | held out | energy pumping | 60 |" in (tmp_path / "ref.md").read_text()


def test_reference_policy_swings_up_every_acrobot_task():
    """The Acrobot rule (torque the way the second joint turns) on the acrobot config's own tasks: it ends every
    episode (above -500, the limit), which constant torque does not."""
    import reference_policies

    rows = reference_policies.rows_of("acrobot", episodes=1, seeds=(0,))
    assert len(rows) == 16 + 20 and all(-500 < r["return"] < -40 for r in rows)
    assert {r["policy"] for r in rows} == {"swing with the elbow"}
    from mamldqn_pl import MetaDQNDataModule

    dm = MetaDQNDataModule(family="acrobot")
    env = dm.family.make_env(dm.test_tasks[0])
    assert reference_policies.play(env, lambda obs: 2, 0) == -500.0


def test_train_diagnostics_reads_a_runs_logged_q_values_norms_and_validation(tmp_path):
    """benchmarks/train_diagnostics.py on a real tiny fit: one row per validation check, the diagnostics' means over
    the steps before it; a metrics.csv without them (a run before they were logged) is refused naming it."""
    import train_diagnostics
    from conftest import mamldqn

    run = tmp_path / "run"
    out = mamldqn("fit", *TINY, "--trainer.max_steps", "20", "--run_dir", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    train_diagnostics.main(["--runs", str(run), "--k", "3", "--every", "10", "--out", str(tmp_path), "--name", "d"])
    rows = list(csv.DictReader((tmp_path / "d.csv").open()))
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert all(float(r["q_taken_absmax"]) >= abs(float(r["q_taken"])) and float(r["theta_norm"]) > 0
               and float(r["grad_norm"]) > 0 for r in rows)
    assert (tmp_path / "d.png").is_file() and "| run | 10 |" in (tmp_path / "d.md").read_text()
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.csv").write_text("step,meta_val/return_k3,train/meta_loss\n10,5.0,\n10,,1.0\n")
    with pytest.raises(SystemExit, match="no train/q_taken"):
        train_diagnostics.main(["--runs", str(old), "--k", "3", "--out", str(tmp_path)])


def test_families_table_only_counts_the_training_seeds_from_the_csv():
    """--table-only labels the rows with the seeds behind them (a meta-init row's n over scratch's), not with
    --seeds, which a rerun of the table may leave at its default; rows that disagree are refused."""
    import families

    rows = [{"config": "c", "init": "scratch", "group": "all", "k": 1, "budget": 200, "n": 60},
            {"config": "c", "init": "meta-init", "group": "all", "k": 1, "budget": 200, "n": 300},
            {"config": "c", "init": "multitask", "group": "all", "k": 1, "budget": 200, "n": 300}]
    assert families.seeds_in(rows) == 5
    rows.append({"config": "c", "init": "meta-init", "group": "all", "k": 3, "budget": 200, "n": 180})
    rows.append({"config": "c", "init": "scratch", "group": "all", "k": 3, "budget": 200, "n": 60})
    with pytest.raises(SystemExit, match="cannot tell the training seeds"):
        families.seeds_in(rows)


def test_body_speed_times_the_step_with_and_without_meta_body_and_restores_it(tmp_path, monkeypatch, capsys):
    """benchmarks/body_speed.py's smoke run: one round per order, a row each, and the module's fast path left
    running meta.body afterwards (the benchmark swaps the body in and out)."""
    from mamldqn_pl.meta import body, qnet

    code, out, _ = script("body_speed", ["--rounds", "1", "--repeats", "1", "--out", str(tmp_path)], monkeypatch,
                          capsys)
    assert code == 0
    table = (tmp_path / "body_speed.md").read_text()
    assert "| second |" in table and "| first |" in table
    assert qnet.features is body.features


def test_explore_duration_counts_the_episodes_random_play_ends(tmp_path, monkeypatch, capsys):
    """benchmarks/explore_duration.py's smoke run: one row per duration, per-step random play ends no episode
    on the family's tasks in 300 steps, held actions end some."""
    code, out, _ = script("explore_duration", ["--durations", "1", "8", "--steps", "300", "--out", str(tmp_path)],
                          monkeypatch, capsys)
    assert code == 0
    rows = {int(r["explore_duration"]): int(r["reached_goal"])
            for r in csv.DictReader(open(tmp_path / "explore_duration.csv"))}
    assert rows[1] == 0 and rows[8] > 0

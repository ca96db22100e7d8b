"""Issue 11 from nothing: does meta-learning pay on every family we ship, against a multitask-pretrained network and
scratch fine-tuned with the same K and budget?

    .venv/bin/python benchmarks/families.py                       # the five configs, training seeds 0-2
    .venv/bin/python benchmarks/families.py --configs acrobot --seeds 0 1 2 --variant tdnorm \\
        --extra-args "--model.td_normalize true"                  # a variant of one config
    .venv/bin/python benchmarks/families.py --configs acrobot --variant nstep3_pre1 --extra-args "--data.n_step 3" \\
        --meta-extra-args "--model.pre_loss_weight 1.0"           # a flag for the meta-init's runs only
    .venv/bin/python benchmarks/families.py --configs acrobot --variant nstep3_dyn_ema_12k_rs \\
        --extra-args "--data.n_step 3" --meta-extra-args "--model.inner_solver dynamics --model.ema_decay 0.998 \\
        --trainer.max_steps 12000 --data.epsilon_adapt 1.0" --multitask-extra-args "--model.ema_decay 0.998 \\
        --trainer.max_steps 12000 --data.epsilon_adapt 1.0"      # the multitask runs' own flags: the same budget
    .venv/bin/python benchmarks/families.py --configs mountaincar_flip --variant from_mt \\
        --extra-args "--model.init_checkpoint RUNS/mt_s{seed}/checkpoints/last.ckpt"  # {seed}: the training seed

For every config and training seed: `mamldqn fit` of the config (validation at K = 0, 1, 3, 5) and of the same
config with `model.algorithm multitask` (same network, data, budget; it fine-tunes what the config adapts). K is
chosen per init on the validation tasks (the mean over seeds of the validation return at each K, at each run's
best checkpoint); scratch is shown at the meta-init's K. Then the best checkpoints of all seeds and scratch run the
meta-test protocol on the config's 20 held-out tasks x 3 evaluation seeds at the config's budget, and so do the
last checkpoints (column `checkpoint`: best, last, or - for scratch), at the same K. Writes
docs/results/families.{csv,md,png}; the README table between the `<!-- families.md -->` markers is replaced.
Runs go to lightning_logs/families/<config>[_<variant>]_<init>_s<seed>; finished runs are reused.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import yaml
from runs import ROOT, readme_table, train

from mamldqn_pl.compare import compare
from mamldqn_pl.module import ALGORITHMS
from mamldqn_pl.report import write_csv

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONFIGS = ("seed_cartpole_mountaincar", "mountaincar_flip", "acrobot", "acrobot_flip", "nav2d")
TARGETS = {  # the target at K <= 5, per group ("all" unless named)
    "seed_cartpole_mountaincar": "CartPole >= 450, MountainCar >= -130",
    "mountaincar_flip": ">= -140, flipped half >= -150",
    "acrobot": ">= -100, trained K no worse than K = 0",
    "acrobot_flip": ">= -120",
    "nav2d": ">= -8",
}
KS = (0, 1, 3, 5)
INITS = ("meta-init", "multitask")
CHECKPOINTS = ("best", "last")
COLUMNS = ("config", "init", "checkpoint", "group", "k", "budget", "n", "mean", "iqm", "ci_low", "ci_high",
           "chosen_k", "val_at_chosen_k")


def run_name(config: str, variant: str, init: str, seed: int) -> str:
    return f"{config}{'_' + variant if variant else ''}_{init}_s{seed}"


def overrides(config: str, init: str) -> list[str]:
    """The multitask baseline of a config: same everything, no inner loop in training; it fine-tunes at test
    what the config's algorithm adapts (the whole network for MAML, the head for ANIL)."""
    validation = ["--meta_val.ks", "[" + ", ".join(map(str, KS)) + "]"]
    if init == "meta-init":
        return validation
    model = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text()).get("model", {})
    adapt = model.get("adapt") or ALGORITHMS[model.get("algorithm", "anil")][0]
    return [*validation, "--model.algorithm", "multitask", "--model.adapt", adapt]


def validation_at_best(run: Path) -> dict[int, float]:
    """The validation return at each K of the check the best checkpoint was chosen at (max at the trained K)."""
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("meta_val/return_k0")]
    trained = yaml.safe_load((run / "config.yaml").read_text())["model"]["inner_steps"]
    best = max(rows, key=lambda r: float(r[f"meta_val/return_k{trained}"]))
    return {k: float(best[f"meta_val/return_k{k}"]) for k in KS if best.get(f"meta_val/return_k{k}")}


def choose_k(runs: list[Path]) -> tuple[int, float]:
    """argmax over K <= 5 of the mean validation return over the training seeds; validation tasks only."""
    per_run = [validation_at_best(r) for r in runs]
    means = {k: float(np.mean([v[k] for v in per_run])) for k in KS if all(k in v for v in per_run)}
    k = max(means, key=means.get)
    return k, means[k]


def evaluate(config: str, runs: dict[str, list[Path]], chosen: dict[str, tuple[int, float]], out: Path) -> list[dict]:
    """Best-validation and last checkpoints of every run (K is chosen at the best checkpoints' validation
    checks, and the same K is read for the last ones: selection must not be what makes a result)."""
    entries = [(f"{init}@{ckpt}", str(run / "checkpoints" / f"{ckpt}.ckpt"))
               for ckpt in CHECKPOINTS for init in INITS for run in runs[init]]
    budget = yaml.safe_load((runs["meta-init"][0] / "config.yaml").read_text())["data"]["adapt_budget"]
    summary = compare(entries, out, list(KS), [budget], [0, 1, 2], 5)
    chosen = {**chosen, "scratch": chosen["meta-init"]}
    rows = []
    for s in summary:
        init, _, ckpt = s["init"].partition("@")
        rows.append({"config": config, **{c: s[c] for c in COLUMNS[3:-2]}, "init": init, "checkpoint": ckpt or "-",
                     "chosen_k": chosen[init][0], "val_at_chosen_k": chosen[init][1] if init != "scratch" else ""})
    return rows


def markdown(rows: list[dict], seeds: int) -> str:
    lines = ["| config | init | K (chosen on validation) | best: mean [95% CI] | IQM | by group | "
             "last: mean [95% CI] | by group | target |", "|---|---|---|---|---|---|---|---|---|"]

    def cells(at_k: list[dict], with_iqm: bool) -> str:
        if not at_k:
            return "- | - |" + (" - |" if with_iqm else "")
        whole = next(r for r in at_k if r["group"] == "all")
        groups = ", ".join(f"{r['group']} {r['mean']:.1f}" for r in at_k if r["group"] != "all")
        iqm = f" {whole['iqm']:.1f} |" if with_iqm else ""
        return f"{whole['mean']:.1f} [{whole['ci_low']:.1f}, {whole['ci_high']:.1f}] |{iqm} {groups or '-'} |"

    for config in dict.fromkeys(r["config"] for r in rows):
        for init in ("meta-init", "multitask", "scratch"):
            at_k = [r for r in rows if r["config"] == config and r["init"] == init and r["k"] == r["chosen_k"]]
            if not at_k:
                continue
            best = [r for r in at_k if r["checkpoint"] != "last"]  # scratch's "-" sits in the best column
            last = [r for r in at_k if r["checkpoint"] == "last"]
            n = f" ({seeds} seed{'s' if seeds > 1 else ''})" if init != "scratch" else ""
            lines.append(f"| {config} | {init}{n} | {at_k[0]['k']} | {cells(best, True)} {cells(last, False)} "
                         f"{TARGETS.get(config.split('+')[0], '') if init == 'meta-init' else ''} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, axes = plt.subplots(1, len(configs), figsize=(3.6 * len(configs), 3.4), squeeze=False)
    for ax, config in zip(axes[0], configs):
        for i, init in enumerate(("meta-init", "multitask", "scratch")):
            pts = sorted((r for r in rows if r["config"] == config and r["init"] == init and r["group"] == "all"
                          and r["checkpoint"] != "last"),
                         key=lambda r: r["k"])
            if pts:
                ks = np.array([p["k"] for p in pts]) + (i - 1) * 0.12
                ax.errorbar(ks, [p["mean"] for p in pts], yerr=[[p["mean"] - p["ci_low"] for p in pts],
                                                                [p["ci_high"] - p["mean"] for p in pts]],
                            marker="o", ms=3, capsize=2, label=init)
        ax.set_title(config, fontsize=9)
        ax.set_xlabel("inner steps K")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out return (95% CI)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", default="", help="a name for --extra-args (rows read CONFIG+VARIANT)")
    parser.add_argument("--extra-args", default="",
                        help="more `mamldqn fit` flags for every run; {seed} becomes the run's training seed")
    parser.add_argument("--meta-extra-args", default="",
                        help="flags for the meta-init runs only (another algorithm: multitask stays the baseline)")
    parser.add_argument("--multitask-extra-args", default="",
                        help="flags for the multitask runs only (the meta-init's budget or EMA, where they differ "
                             "from the config's)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs/results"),
                        help="the README's table is rewritten only for this default")
    parser.add_argument("--name", default="families")
    parser.add_argument("--runs", default=str(ROOT / "lightning_logs" / "families"))
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite NAME.md/.png and the README table from an existing NAME.csv (no runs)")
    args = parser.parse_args()
    if args.table_only:
        out = Path(args.out)
        with open(out / f"{args.name}.csv") as f:
            rows = [{"checkpoint": "best", **r, **{c: int(r[c]) for c in ("k", "budget", "n", "chosen_k")},
                     **{c: float(r[c]) for c in ("mean", "iqm", "ci_low", "ci_high")}} for r in csv.DictReader(f)]
        write_outputs(rows, out, args.name, seeds_in(rows))
        return
    runs_dir, extra = Path(args.runs), shlex.split(args.extra_args)
    own = {"meta-init": shlex.split(args.meta_extra_args), "multitask": shlex.split(args.multitask_extra_args)}
    start = time.time()
    jobs = [(c, init, s) for s in args.seeds for c in args.configs for init in INITS]

    def fit(job: tuple[str, str, int]) -> None:
        config, init, seed = job
        flags = [*extra, *own[init]]
        train(ROOT / "configs" / f"{config}.yaml", seed, runs_dir / run_name(config, args.variant, init, seed),
              overrides=[*overrides(config, init), *(f.replace("{seed}", str(seed)) for f in flags)])

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(fit, jobs))
    rows: list[dict] = []
    for config in args.configs:
        runs = {init: [runs_dir / run_name(config, args.variant, init, s) for s in args.seeds] for init in INITS}
        chosen = {init: choose_k(runs[init]) for init in INITS}
        label = config + (f"+{args.variant}" if args.variant else "")
        rows += evaluate(label, runs, chosen, runs_dir / f"{label}_compare")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{args.name}.csv", COLUMNS, rows)
    write_outputs(rows, out, args.name, len(args.seeds))
    print(f"\nwrote {args.name}.csv/.md/.png to {out}; wall time {time.time() - start:.0f} s")


def seeds_in(rows: list[dict]) -> int:
    """The training seeds behind a csv's rows: a meta-init row's n (tasks x evaluation seeds x training seeds) over
    the scratch row's of the same config, group, K and budget (scratch has no training seeds). What --table-only
    labels the rows with, whatever --seeds says."""
    scratch = {(r["config"], r["group"], r["k"], r["budget"]): r["n"] for r in rows if r["init"] == "scratch"}
    counts = {round(r["n"] / scratch[key]) for r in rows if r["init"] == "meta-init"
              and (key := (r["config"], r["group"], r["k"], r["budget"])) in scratch}
    if len(counts) != 1:
        raise SystemExit(f"cannot tell the training seeds from the csv's rows (meta-init n / scratch n: {counts})")
    return counts.pop()


def write_outputs(rows: list[dict], out: Path, name: str, seeds: int) -> None:
    table = markdown(rows, seeds)
    (out / f"{name}.md").write_text(table + "\n")
    plot(rows, out / f"{name}.png")
    if out.resolve() == (ROOT / "docs/results").resolve():
        readme_table(name, table)
    print(table)


if __name__ == "__main__":
    main()

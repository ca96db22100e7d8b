"""Shared by the benchmarks: train one run of a config in a subprocess (reusing a run that already finished), run
the CLI from another tree (a baseline commit's worktree), and put a generated table into the README."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(config: Path, seed: int, run: Path, steps: int | None = None, overrides: list[str] | None = None) -> float:
    """`mamldqn fit` of `config` (+ overrides) with `seed` into `run`; returns the fit's wall seconds (0 when a
    finished run was reused: its time is in run/fit_done). A run stopped half-way resumes from its last
    checkpoint (its time then counts from the resume). A run folder made with other settings (another config, say,
    now that the default config has changed) is refused, not reused: run/fit_args.json holds what made it."""
    done, made_by = run / "fit_done", run / "fit_args.json"
    steps_args = ["--trainer.max_steps", str(steps)] if steps else []
    args = ["--config", str(config.resolve().relative_to(ROOT) if config.resolve().is_relative_to(ROOT) else config),
            "--seed_everything", str(seed), *steps_args, *(overrides or [])]
    if made_by.is_file() and json.loads(made_by.read_text()) != args:
        raise SystemExit(f"{run} was made by `mamldqn fit {' '.join(json.loads(made_by.read_text()))}`, not by "
                         f"`{' '.join(args)}`: move it away or pass another --runs folder")
    if done.is_file():
        return float(done.read_text())
    run.mkdir(parents=True, exist_ok=True)
    made_by.write_text(json.dumps(args))
    last = run / "checkpoints" / "last.ckpt"
    resume = ["--ckpt_path", "last"] if last.is_file() else []
    cmd = [sys.executable, "-m", "mamldqn_pl", "fit", *args, "--run_dir", str(run), "--trainer.enable_progress_bar",
           "false", *resume]
    start = time.time()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{config.name} seed {seed} ({' '.join(overrides or [])}) failed:\n{out.stderr[-3000:]}")
    seconds = time.time() - start
    done.write_text(f"{seconds:.1f}")
    print(f"trained {run.name} in {seconds:.0f} s", flush=True)
    return seconds


@contextlib.contextmanager
def worktree(commit: str, folder: Path) -> Iterator[Path]:
    """`commit` checked out as a git worktree in `folder`, removed again afterwards: an older tree to run beside
    this one, with nothing of this tree changed."""
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), commit], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT, capture_output=True)


def cli_in(tree: Path, *args: str) -> None:
    """`mamldqn ARGS` with the package imported from `tree` (this one or a worktree); a failure ends the script
    with the command's stderr."""
    out = subprocess.run([sys.executable, "-m", "mamldqn_pl", *args], cwd=tree, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tree)})
    if out.returncode:
        raise SystemExit(f"{args[0]} in {tree} failed:\n{out.stderr[-3000:]}")


def readme_table(name: str, table: str) -> None:
    """Replace what stands between the `<!-- NAME.md -->` and `<!-- /NAME.md -->` markers by `table`, in the README
    or in the docs/ page that holds them (the session-by-session experiments live in docs/experiments.md)."""
    marker = re.compile(rf"(<!-- {re.escape(name)}\.md -->\n)(?:.*?\n)?(<!-- /{re.escape(name)}\.md -->)", re.S)
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        if marker.search(text):
            path.write_text(marker.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text))
            return
    print(f"no <!-- {name}.md --> markers in README.md or docs/*.md: the table is only in its own .md file", flush=True)


def publish_table(out: Path, name: str, table: str) -> None:
    """A benchmark's markdown table: into out/NAME.md, to stdout, and, when `out` is docs/results, between the
    table's markers in the README or docs (`readme_table`)."""
    (out / f"{name}.md").write_text(table + "\n")
    print(table)
    if out.resolve() == (ROOT / "docs/results").resolve():
        readme_table(name, table)


def trained_budget(rows: list[dict]) -> str:
    """The trained budget among an adaptation.csv's rows: `test` runs adapt_budget x (1/4, 1/2, 1, 2)."""
    budgets = sorted({int(r["budget"]) for r in rows})
    return str(budgets[len(budgets) // 2])

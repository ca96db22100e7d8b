"""Shared by the benchmarks: train one run of a config in a subprocess (reusing a run that already finished), and
put a generated table into the README."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(config: Path, seed: int, run: Path, steps: int | None = None, overrides: list[str] | None = None) -> float:
    """`mamldqn fit` of `config` (+ overrides) with `seed` into `run`; returns the fit's wall seconds (0 when a
    finished run was reused: its time is in run/fit_done). A run stopped half-way resumes from its last
    checkpoint (its time then counts from the resume)."""
    done = run / "fit_done"
    if done.is_file():
        return float(done.read_text())
    last = run / "checkpoints" / "last.ckpt"
    steps_args = ["--trainer.max_steps", str(steps)] if steps else []
    resume = ["--ckpt_path", "last"] if last.is_file() else []
    cmd = [sys.executable, "-m", "mamldqn_pl", "fit", "--config", str(config), "--seed_everything", str(seed),
           "--run_dir", str(run), "--trainer.enable_progress_bar", "false", *steps_args, *(overrides or []), *resume]
    start = time.time()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{config.name} seed {seed} ({' '.join(overrides or [])}) failed:\n{out.stderr[-3000:]}")
    seconds = time.time() - start
    done.write_text(f"{seconds:.1f}")
    print(f"trained {run.name} in {seconds:.0f} s", flush=True)
    return seconds


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


def trained_budget(rows: list[dict]) -> str:
    """The trained budget among an adaptation.csv's rows: `test` runs adapt_budget x (1/4, 1/2, 1, 2)."""
    budgets = sorted({int(r["budget"]) for r in rows})
    return str(budgets[len(budgets) // 2])

"""Does a change leave runs bitwise as they were? Fits one config at a baseline commit (a git worktree) and in this
tree, side by side (one per core) in the same venv, then compares the two last checkpoints tensor by tensor:
parameters, optimiser state, the data module's pools, buffers and RNG states, and the callbacks' state.

    .venv/bin/python benchmarks/same_run.py [--baseline fadfaa1] [--config configs/cartpole.yaml] [--steps 400] \\
        [--extra-args "--meta_val.every_n_steps 200"]
    .venv/bin/python benchmarks/same_run.py --compare RUN_A/checkpoints/last.ckpt RUN_B/checkpoints/last.ckpt

`--compare A B` compares two checkpoints already written (e.g. the run folders that two sessions'
`benchmarks/make_run_speed.py --keep` kept). Prints one line per differing tensor, and exits 1 when any
differs. Used for changes meant to be pure speed (the thirteenth session's data side), whose earlier results must
stand as they are.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from runs import ROOT, cli_in, worktree

COMPARED = ("state_dict", "optimizer_states", "MetaDQNDataModule", "callbacks")
RUN_FOLDER = re.compile(r"/[^/]\S*/checkpoints/")  # a run folder's path in ModelCheckpoint's state keys


def tensors(value, path: str):
    """(path, tensor) for every tensor in a checkpoint's nested dicts and lists. The folder of the run, which
    Lightning writes into the checkpoint callback's keys, becomes RUN, so that runs in two folders (or a run
    folder copied elsewhere) compare."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from tensors(v, f"{path}/{RUN_FOLDER.sub('RUN/checkpoints/', str(k))}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from tensors(v, f"{path}/{i}")


def flat(ckpt_path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(ckpt_path, weights_only=True)
    return dict(item for key in COMPARED for item in tensors(ckpt.get(key), key))


def compare(a: Path, b: Path) -> tuple[list[str], int]:
    """Tensors that differ (or exist in one checkpoint only) between two checkpoints, and how many `b` holds."""
    fa, fb = flat(a), flat(b)
    out = [f"{k}: only in {a if k in fa else b}" for k in sorted(set(fa) ^ set(fb))]
    out += [f"{k}: differs" for k in sorted(set(fa) & set(fb))
            if fa[k].shape != fb[k].shape or not torch.equal(fa[k], fb[k])]
    return out, len(fb)


def differences(a: Path, b: Path) -> list[str]:
    return compare(a, b)[0]


def fit(tree: Path, run_dir: Path, config: str, steps: int, extra: list[str]) -> Path:
    cli_in(tree, "fit", "--config", config, "--run_dir", str(run_dir), "--trainer.max_steps", str(steps),
           "--trainer.enable_progress_bar", "false", *extra)
    return run_dir / "checkpoints" / "last.ckpt"


def report(a: Path, b: Path, label: str) -> None:
    """Print what differs and a last line that says whether all is equal; exit 1 when anything differs."""
    diff, n = compare(a, b)
    for line in diff:
        print(line)
    print(f"{label}: " + ("bitwise equal" if not diff else f"{len(diff)} of {n} tensors differ")
          + f" ({n} tensors compared)")
    sys.exit(1 if diff else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD")
    parser.add_argument("--config", default="configs/cartpole.yaml")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--extra-args", default="", help="more `mamldqn fit` flags, for both runs")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                        help="compare these two checkpoints instead of fitting")
    args = parser.parse_args()
    if args.compare:
        report(*args.compare, f"{args.compare[0]} against {args.compare[1]}")
    extra = shlex.split(args.extra_args)
    with tempfile.TemporaryDirectory() as tmp, worktree(args.baseline, Path(tmp) / "baseline") as base:
        trees = {"baseline": base, "this_tree": ROOT}
        with ThreadPoolExecutor(2) as pool:
            ckpts = dict(zip(trees, pool.map(
                lambda name: fit(trees[name], Path(tmp) / name, args.config, args.steps, extra), trees)))
        report(ckpts["baseline"], ckpts["this_tree"],
               f"{args.config}, {args.steps} steps, {args.baseline} against this tree")


if __name__ == "__main__":
    main()

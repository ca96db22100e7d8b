"""Reproduce the README's algorithm comparison from nothing: meta-train each algorithm on CartPole with the same
budget and seeds, then compare their best checkpoints (and scratch) on the same held-out tasks.

    .venv/bin/python benchmarks/algorithms.py [--steps 8000] [--seeds 0 1 2] [--jobs 2] [--out docs/results]
        [--algorithms anil fomaml maml metasgd reptile multitask] [--extra maml_tdnorm] [--extra-seeds 1]

Runs go to lightning_logs/bench_algorithms/<config>_s<seed>; a finished run is reused and a stopped one resumed,
so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from runs import ROOT, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+",
                        default=["anil", "fomaml", "maml", "metasgd", "reptile", "multitask"])
    parser.add_argument("--extra", nargs="*", default=["maml_tdnorm"],
                        help="configs of the experiment, trained on the first --extra-seeds seeds")
    parser.add_argument("--extra-seeds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs/results"))
    args = parser.parse_args()
    runs = ROOT / "lightning_logs" / "bench_algorithms"
    jobs = [(a, s) for a in args.algorithms for s in args.seeds]
    jobs += [(a, s) for a in args.extra for s in args.seeds[: args.extra_seeds]]
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: train(ROOT / f"configs/cartpole_{job[0]}.yaml", job[1],
                                        runs / f"{job[0]}_s{job[1]}", args.steps), jobs))
    entries = [f"{config}={runs / f'{config}_s{seed}' / 'checkpoints' / 'best.ckpt'}" for config, seed in jobs]
    subprocess.run([sys.executable, "-m", "mamldqn_pl", "compare", *entries, "--out", args.out], cwd=ROOT,
                   check=True)
    print(f"\nwall time {time.time() - start:.0f} s for {len(jobs)} runs of {args.steps} meta-steps "
          f"({args.jobs} at a time) and the comparison")


if __name__ == "__main__":
    main()

"""Where the time of the fast ANIL meta-step goes (README, "Speed", twelfth session): torch.profiler over `steps`
bare meta-steps of `make bench`'s (e) row (default config's shape: 32 tasks, K = 3, 128 + 128 rows, second order),
one torch thread, freed memory kept as `mamldqn` keeps it. Prints the operators by self CPU time, per step.

    .venv/bin/python benchmarks/profile_step.py [--steps 20] [--rows 25]
"""

from __future__ import annotations

import argparse

import torch
from bench import bare_step, random_batch
from torch.profiler import ProfilerActivity, profile

from mamldqn_pl import memory
from mamldqn_pl.module import MAMLDQN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    memory.keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MAMLDQN(algorithm="maml", adapt="head", first_order=False, inner_steps=3)
    batch = random_batch(32)
    opt = model.configure_optimizers()  # the module's own optimiser (multi-tensor Adam), as in `fit`
    for _ in range(max(args.steps, 5)):  # warm-up: the allocator's pools, the first calls' dispatch caches
        bare_step(model, batch, opt)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            bare_step(model, batch, opt)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / args.steps / 1e3
    print(f"{total:.1f} ms a step (self CPU, profiler on), {args.steps} steps\n")
    print("| operator | self ms / step | total ms / step | calls / step |\n|---|---|---|---|")
    for e in events[:args.rows]:
        print(f"| {e.key} | {e.self_cpu_time_total / args.steps / 1e3:.2f} | {e.cpu_time_total / args.steps / 1e3:.2f} "
              f"| {e.count / args.steps:g} |")


if __name__ == "__main__":
    main()

"""Does the meta-step run slower inside a fit because the data side has just run (cold caches)? Issue 13, item 3
compares `fit` with the bare meta-step timed on stored batches back to back (`make bench`, row (c)). This times
the same bare step two ways on the default config, after a short fit: on `batches` stored batches back to back,
and right after each batch's collection (the data side untimed), alternating which goes first in each round.

    .venv/bin/python benchmarks/bare_step_caches.py [--rounds 8] [--batches 100] [--fit-steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from bench import bare_step, timed_fit

from mamldqn_pl.memory import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--fit-steps", type=int, default=200)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"stored": [], "fresh": []}
    with tempfile.TemporaryDirectory() as tmp:
        cli, _, _ = timed_fit(args.fit_steps, tmp)  # past the warm start: buffers full, tasks retiring
        model, dm = cli.model, cli.datamodule
        opt = model.configure_optimizers()

        def stored() -> None:
            batches = [dm.next_batch() for _ in range(args.batches)]
            start = time.perf_counter()
            for batch in batches:
                bare_step(model, batch, opt)
            times["stored"].append((time.perf_counter() - start) / args.batches * 1e3)

        def fresh() -> None:
            total = 0.0
            for _ in range(args.batches):
                batch = dm.next_batch()
                start = time.perf_counter()
                bare_step(model, batch, opt)
                total += time.perf_counter() - start
            times["fresh"].append(total / args.batches * 1e3)

        for r in range(args.rounds):
            for run in (stored, fresh) if r % 2 == 0 else (fresh, stored):
                run()
    print("| bare step | ms per round | median |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {' '.join(f'{v:.1f}' for v in values)} | {statistics.median(values):.1f} |")
    diffs = [f - s for s, f in zip(times["stored"], times["fresh"])]
    print(f"| fresh - stored | {' '.join(f'{d:+.1f}' for d in diffs)} | {statistics.median(diffs):+.1f} |")


if __name__ == "__main__":
    main()

"""What `meta.body` (the body pass with its ReLUs in place, twenty-fourth session) adds to the bare ANIL meta-step:
`make bench`'s (e) rows with the fast path's body as it runs now, with the plain modules in its place (net.body and
target_net's own forward: the fast path as it was), and the torch.func reference, timed in turn within every
repeat, over several rounds. The three give bitwise-equal meta-gradients where only the body differs
(tests/test_body.py), so the difference is time only.

    .venv/bin/python benchmarks/body_speed.py [--rounds 3] [--repeats 61]

Writes docs/results/body_speed.{csv,md}.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from pathlib import Path

import torch
from bench import bare_step, paired_medians, random_batch
from runs import ROOT, publish_table

import mamldqn_pl.module as module
from mamldqn_pl.memory import keep_freed_memory
from mamldqn_pl.meta import body, qnet
from mamldqn_pl.module import MAMLDQN
from mamldqn_pl.report import write_csv


def use_plain_body(plain: bool) -> None:
    """The fast path's body as it runs now (meta.body), or the plain modules in its place."""
    qnet.features = (lambda net, obs: net.body(obs)) if plain else body.features
    module.body_q_values = (lambda net, obs: net(obs)) if plain else body.q_values


def timed_step(model: MAMLDQN, batch: dict, opt, plain: bool) -> None:
    use_plain_body(plain)
    bare_step(model, batch, opt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=61)
    parser.add_argument("--out", default=str(ROOT / "docs/results"))
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(1)
    rows = []
    for first_order in (False, True):
        torch.manual_seed(0)
        model = MAMLDQN(algorithm="anil", first_order=first_order)
        batch = random_batch(32)
        opt = model.configure_optimizers()
        reference_opt = torch.optim.Adam(model.net.parameters(), lr=1e-3, foreach=False)  # as `make bench`'s (e)
        calls = [partial(bare_step, model, batch, reference_opt, False), partial(timed_step, model, batch, opt, True),
                 partial(timed_step, model, batch, opt, False)]
        for round_ in range(args.rounds):
            ref, plain, now = paired_medians(calls, args.repeats)
            rows.append({"order": "first" if first_order else "second", "round": round_, "reference_ms": ref * 1e3,
                         "plain_body_ms": plain * 1e3, "meta_body_ms": now * 1e3})
    use_plain_body(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "body_speed.csv", list(rows[0]), rows)
    lines = ["| order | torch.func reference | fast path, plain body | fast path, meta.body | ratio then | ratio now |",
             "|---|---|---|---|---|---|"]
    for order in ("second", "first"):
        mine = [r for r in rows if r["order"] == order]
        med = {k: statistics.median(r[k] for r in mine) for k in ("reference_ms", "plain_body_ms", "meta_body_ms")}
        then, now = (", ".join(f"{r['reference_ms'] / r[key]:.2f}x" for r in mine)
                     for key in ("plain_body_ms", "meta_body_ms"))
        lines.append(f"| {order} | {med['reference_ms']:.2f} ms | {med['plain_body_ms']:.2f} ms | "
                     f"{med['meta_body_ms']:.2f} ms | {then} | {now} |")
    table = "\n".join(lines)
    publish_table(out, "body_speed", table)


if __name__ == "__main__":
    main()

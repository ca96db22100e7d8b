"""`mamldqn compare` (also `python -m mamldqn_pl.compare`): several checkpoints plus scratch, one table and one
plot, on the checkpoints' shared held-out test tasks.

    mamldqn compare anil=runs/anil_s0/checkpoints/best.ckpt anil=runs/anil_s1/checkpoints/best.ckpt \\
        maml=runs/maml_s0/checkpoints/best.ckpt --out results/

Checkpoints given the same LABEL are pooled (e.g. training seeds): the CI is then over seeds x tasks x
evaluation seeds, stratified by task. Writes compare.csv, compare.md, compare.json and compare.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mamldqn_pl.data import MetaDQNDataModule
from mamldqn_pl.errors import ConfigError
from mamldqn_pl.evaluation import Protocol, eval_budgets, evaluate_init, evaluate_scratch
from mamldqn_pl.metainit import MetaInit
from mamldqn_pl.module import MAMLDQN
from mamldqn_pl.report import format_table, summarize, write_report


def load(path: str) -> tuple[MAMLDQN, MetaDQNDataModule]:
    """The module and data module of a checkpoint, rebuilt from its own hyperparameters."""
    init = MetaInit.load(path)
    return init.model, MetaDQNDataModule(**init.data)


def compare(entries: list[tuple[str, str]], out: Path, ks: list[int], budgets: list[int] | None,
            seeds: list[int], episodes: int) -> list[dict]:
    rows: list[dict] = []
    reference: MetaDQNDataModule | None = None
    first: MAMLDQN | None = None
    for run, (label, path) in enumerate(entries):
        model, dm = load(path)
        tasks = [t.to_dict() for t in dm.test_tasks]
        if reference is None:
            reference, first = dm, model
        elif tasks != [t.to_dict() for t in reference.test_tasks]:
            raise ConfigError(f"{path}: its held-out test tasks differ from those of {entries[0][1]} (data.family, "
                              "ranges, test_ranges, test_seed and n_test_tasks must match)")
        for budget in eval_budgets(dm.hparams.adapt_budget, budgets):
            protocol = Protocol.of(dm.hparams, ks, episodes, seeds, budget)
            net = model.init_net  # the EMA of theta when the run kept one
            part = evaluate_init(net, dict(net.named_parameters()), dm.family, dm.test_tasks,
                                 model.adapt, model.inner, model.hparams.gamma, protocol, label=label)
            rows += [{**r, "run": run} for r in part]
    assert reference is not None and first is not None
    main = reference.hparams.adapt_budget
    for budget in eval_budgets(main, budgets):
        protocol = Protocol.of(reference.hparams, ks, episodes, seeds, budget)
        rows += evaluate_scratch(first.net, reference.family, reference.test_tasks, first.adapt, first.inner,
                                 first.hparams.gamma, protocol)
    summary = summarize(rows)
    meta = {"checkpoints": entries, "ks": ks, "budgets": budgets, "seeds": seeds, "episodes": episodes}
    write_report(rows, summary, out, meta, budget=main, k=first.hparams.inner_steps, name="compare")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mamldqn compare", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="PATH or LABEL=PATH; one LABEL on several runs pools them")
    parser.add_argument("--out", required=True, help="folder for compare.csv/.md/.json/.png")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 5, 10])
    parser.add_argument("--budgets", type=int, nargs="+", default=None,
                        help="new-task env steps (default: adapt_budget x 1/4, 1/2, 1, 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="evaluation seeds")
    parser.add_argument("--episodes", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    entries = []
    for item in args.checkpoints:
        label, _, path = item.rpartition("=")
        entries.append((label or Path(path).parent.parent.name, path))
    try:
        summary = compare(entries, Path(args.out), args.ks, args.budgets, args.seeds, args.episodes)
    except ConfigError as err:
        print(f"mamldqn compare: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(format_table([s for s in summary if s["group"] == "all"]))
    print(f"\nwrote compare.csv, compare.md, compare.json, compare.png to {args.out}")


if __name__ == "__main__":
    main()

"""Issue 10: how much of a validation curve's swing is the measurement itself, and how much would any move of theta
of the size training makes give?

The validation return at K is deterministic for fixed weights (fixed tasks and evaluation seeds), but CartPole's
episodes are chaotic in the weights: a change far smaller than one check interval's training redraws them. For each
checkpoint this adds Gaussian noise of a few sizes to every parameter of the initialisation (12 draws each) and
reports the spread of the validation return at K: the swing that validation shows without any training. With
`--relative` the noise of each tensor is sigma times its root-mean-square, the scale theta's own moves are
measured on below. With `--fixed-support` the support is still played by the unperturbed weights, so that only
the adaptation and the greedy play see the noise.

`--trace RUN ...` reads the thetas that `benchmarks/theta_trace.py` recorded every 500 steps of a run and, for
each pair of checks in the final third, sets how far theta moved (relative rms) and how much its validation return
changed beside the mean change under random moves of the same size (`--draws` of them): is a swing a directed
drift, or what any move of that size does? Validation tasks only. Writes NAME.{csv,md} and, where NAME is a
README table's, that table.

    .venv/bin/python benchmarks/val_noise.py LABEL=PATH/TO.ckpt ... [--k 5] [--sigmas 1e-4 1e-3 3e-3] \\
        [--draws 12] [--relative] [--fixed-support] [--out docs/results/val_noise]
    PYTHONPATH=.:benchmarks .venv/bin/python -m mamldqn_pl fit ... --trainer.callbacks+=theta_trace.ThetaTrace \\
        --trainer.callbacks.path RUN/theta_trace.pt
    .venv/bin/python benchmarks/val_noise.py --trace RUN ... --draws 4 --out docs/results/val_trace
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
import yaml
from runs import ROOT, readme_table

from mamldqn_pl.compare import load
from mamldqn_pl.evaluation import Protocol, evaluate_init
from mamldqn_pl.report import write_csv

COLUMNS = ("checkpoint", "k", "sigma", "draws", "unperturbed", "mean", "std", "min", "max")
TRACE_COLUMNS = ("run", "from_step", "to_step", "move", "val_from", "val_to", "change", "random_abs_change",
                 "random_max_abs_change")
Weights = dict[str, torch.Tensor]


def perturbed(theta: Weights, sigma: float, draw: int, relative: bool = False) -> Weights:
    """theta + sigma x N(0, 1) per parameter (x the tensor's rms with `relative`), draw `draw` of a fixed stream."""
    generator = torch.Generator().manual_seed(draw)
    return {k: v + torch.randn(v.shape, generator=generator) * sigma * (v.pow(2).mean().sqrt() if relative else 1.0)
            for k, v in theta.items()}


def relative_move(a: Weights, b: Weights) -> float:
    """The mean over tensors of rms(b - a) / rms(a): the scale `--relative` noise is measured on."""
    return float(np.mean([float((b[k] - a[k]).pow(2).mean().sqrt() / a[k].pow(2).mean().sqrt()) for k in a]))


def val_return(model, dm, params: Weights, protocol: Protocol, players: Weights | None = None) -> float:
    """The validation protocol's mean return for the initialisation `params` (support played by `players`)."""
    rows = evaluate_init(model.init_net, params, dm.family, dm.val_tasks, model.adapt, model.inner,
                         model.hparams.gamma, protocol, collect_params=players)
    return sum(r["return"] for r in rows) / len(rows)


def weights(model) -> Weights:
    return {k: v.detach().clone() for k, v in model.init_net.named_parameters()}


def measure(label: str, ckpt: str, k: int, sigmas: list[float], draws: int, relative: bool = False,
            fixed_support: bool = False) -> list[dict]:
    model, dm = load(ckpt)
    protocol = Protocol.of(dm.hparams, [k], 5, [0, 1, 2])  # meta_val's episodes and evaluation seeds
    theta = weights(model)
    unperturbed = val_return(model, dm, theta, protocol)
    rows = []
    for sigma in sigmas:
        values = [val_return(model, dm, perturbed(theta, sigma, draw, relative), protocol,
                             theta if fixed_support else None) for draw in range(draws)]
        rows.append({"checkpoint": label, "k": k, "sigma": sigma, "draws": draws, "unperturbed": round(unperturbed, 1),
                     "mean": round(statistics.mean(values), 1), "std": round(statistics.pstdev(values), 1),
                     "min": round(min(values), 1), "max": round(max(values), 1)})
    return rows


def trace_rows(run: Path, k: int, draws: int) -> list[dict]:
    """Every pair of traced thetas one check apart in the final third of the run's max_steps."""
    model, dm = load(str(run / "checkpoints" / "last.ckpt"))
    protocol = Protocol.of(dm.hparams, [k], 5, [0, 1, 2])
    trace = torch.load(run / "theta_trace.pt", weights_only=True)
    horizon = int(yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"])
    steps = [s for s in sorted(trace) if s >= 2 * horizon / 3]
    vals = {s: val_return(model, dm, trace[s], protocol) for s in steps}  # each traced theta evaluated once
    rows = []
    for a, b in zip(steps, steps[1:]):
        move = relative_move(trace[a], trace[b])
        here, there = vals[a], vals[b]
        random = [abs(val_return(model, dm, perturbed(trace[a], move, d, relative=True), protocol) - here)
                  for d in range(draws)]
        rows.append({"run": run.name, "from_step": a, "to_step": b, "move": round(move, 5), "val_from": round(here, 1),
                     "val_to": round(there, 1), "change": round(there - here, 1),
                     "random_abs_change": round(statistics.mean(random), 1),
                     "random_max_abs_change": round(max(random), 1)})
        print(f"{run.name} {a}-{b}: move {move:.4f}, change {there - here:+.0f}, "
              f"random {rows[-1]['random_abs_change']}", flush=True)
    return rows


def write(out: Path, columns, rows: list[dict], table: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_suffix(".csv"), columns, rows)
    out.with_suffix(".md").write_text(table + "\n")
    if out.parent.resolve() == (ROOT / "docs/results").resolve():
        readme_table(out.name, table)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", help="LABEL=PATH pairs")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1e-4, 1e-3, 3e-3])
    parser.add_argument("--draws", type=int, default=12)
    parser.add_argument("--relative", action="store_true", help="sigma x each tensor's rms")
    parser.add_argument("--fixed-support", action="store_true", help="the unperturbed weights play the support")
    parser.add_argument("--trace", nargs="+", default=[], help="run folders holding a theta_trace.pt")
    parser.add_argument("--out", default=str(ROOT / "docs/results/val_noise"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    if args.trace:
        rows = [row for run in args.trace for row in trace_rows(Path(run), args.k, args.draws)]
        lines = [f"| run | steps | theta's move (relative rms) | validation at K = {args.k} | random moves of that "
                 f"size: mean abs change (max of {args.draws}) |", "|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['from_step']}-{r['to_step']} | {r['move']:.4f} | {r['val_from']:.0f} -> "
                  f"{r['val_to']:.0f} ({r['change']:+.0f}) | {r['random_abs_change']:.0f} "
                  f"({r['random_max_abs_change']:.0f}) |" for r in rows]
        write(out, TRACE_COLUMNS, rows, "\n".join(lines))
        return
    if not args.checkpoints:
        raise SystemExit("val_noise.py: give LABEL=PATH checkpoints, or --trace RUN folders")
    rows = []
    for item in args.checkpoints:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"val_noise.py: {item!r}: give LABEL=PATH to an existing checkpoint")
        rows += measure(label, path, args.k, args.sigmas, args.draws, args.relative, args.fixed_support)
    lines = [f"| checkpoint | noise sigma{' (x rms)' if args.relative else ''} | validation at K = {args.k}: "
             f"unperturbed | mean of {args.draws} draws | std | range |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['checkpoint']} | {r['sigma']:g} | {r['unperturbed']:.0f} | {r['mean']:.0f} | {r['std']:.1f} | "
              f"{r['min']:.0f}-{r['max']:.0f} |" for r in rows]
    write(out, COLUMNS, rows, "\n".join(lines))


if __name__ == "__main__":
    main()

"""How rough is the adapted return as a function of theta? Issue 10's swings could be training that goes wrong,
or a return that changes a lot under the small moves of theta that late meta-training still makes. This measures
the second: the validation protocol (the validation tasks x 3 evaluation seeds, 200 new-task env steps, K inner
steps) on a checkpoint's theta and on theta plus Gaussian noise, per tensor scaled to `sigma` times the tensor's
root-mean-square, in several random directions. The support is collected by the perturbed init, as at meta-test.
It also prints how far theta actually moved between the run's best and last checkpoints, on the same scale.

    .venv/bin/python benchmarks/sensitivity.py --runs lightning_logs/session5 --variant apt_cosine --seeds 0 3 5

Writes docs/results/NAME.{csv,md,png}; the README's table between `<!-- NAME.md -->` markers is replaced.
Validation tasks only: nothing here looks at the held-out test tasks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from runs import ROOT, readme_table  # noqa: E402

from mamldqn_pl.compare import load  # noqa: E402
from mamldqn_pl.evaluation import Protocol, evaluate_init  # noqa: E402
from mamldqn_pl.report import write_csv  # noqa: E402

COLUMNS = ("run", "checkpoint", "step", "sigma", "direction", "k", "mean")
TRACE_COLUMNS = ("run", "from_step", "to_step", "move", "val_from", "val_to", "change", "random_abs_change",
                 "random_max_abs_change")


def perturbed(params: dict[str, torch.Tensor], sigma: float, direction: int) -> dict[str, torch.Tensor]:
    """theta + sigma x rms(tensor) x N(0, 1), each direction its own fixed draw (direction 0 of sigma 0: theta)."""
    if sigma == 0:
        return {k: v.detach().clone() for k, v in params.items()}
    gen = torch.Generator().manual_seed(1000 + direction)
    return {k: v.detach() + sigma * v.detach().pow(2).mean().sqrt() * torch.randn(v.shape, generator=gen)
            for k, v in params.items()}


def relative_move(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The mean over tensors of rms(b - a) / rms(a): the scale `sigma` is measured on."""
    return float(np.mean([float((b[k] - a[k]).pow(2).mean().sqrt() / a[k].pow(2).mean().sqrt()) for k in a]))


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.init_net.named_parameters()}


def val_mean(model, dm, params: dict[str, torch.Tensor], k: int, episodes: int) -> float:
    """The validation protocol's mean return at K = k for the initialisation `params`."""
    protocol = Protocol.of(dm.hparams, (k,), episodes, (0, 1, 2))
    got = evaluate_init(model.init_net, params, dm.family, dm.val_tasks, model.adapt, model.inner, model.hparams.gamma,
                        protocol)
    return float(np.mean([r["return"] for r in got]))


def trace_rows(run: Path, k: int, directions: int, episodes: int) -> list[dict]:
    """For each pair of traced thetas 500 steps apart in the final third: how far theta moved, how much the
    validation return changed, and how much it changes, on average, under random moves of the same size."""
    model, dm = load(str(run / "checkpoints" / "last.ckpt"))
    trace = torch.load(run / "theta_trace.pt", weights_only=True)
    steps = sorted(trace)
    horizon = steps[-1] + (steps[-1] - steps[-2])
    rows = []
    for a, b in zip(steps, steps[1:]):
        if a < 2 * horizon / 3:
            continue
        move = relative_move(trace[a], trace[b])
        here, there = val_mean(model, dm, trace[a], k, episodes), val_mean(model, dm, trace[b], k, episodes)
        random = [val_mean(model, dm, perturbed(trace[a], move, d), k, episodes) - here for d in range(directions)]
        rows.append({"run": run.name, "from_step": a, "to_step": b, "move": move, "val_from": here, "val_to": there,
                     "change": there - here, "random_abs_change": float(np.mean(np.abs(random))),
                     "random_max_abs_change": float(np.max(np.abs(random)))})
        print(f"{run.name} {a}->{b}: move {move:.4f}, change {there - here:+.0f}, "
              f"random {rows[-1]['random_abs_change']:.0f}", flush=True)
    return rows


def measure(ckpt: Path, sigmas: list[float], directions: int, ks: tuple[int, ...], episodes: int) -> list[dict]:
    model, dm = load(str(ckpt))
    protocol = Protocol.of(dm.hparams, ks, episodes, (0, 1, 2))
    net = model.init_net
    theta = dict(net.named_parameters())
    step = int(torch.load(ckpt, weights_only=True)["global_step"])
    rows = []
    for sigma in sigmas:
        for d in range(1 if sigma == 0 else directions):
            got = evaluate_init(net, perturbed(theta, sigma, d), dm.family, dm.val_tasks, model.adapt, model.inner,
                                model.hparams.gamma, protocol)
            for k in ks:
                rows.append({"run": ckpt.parents[1].name, "checkpoint": ckpt.stem, "step": step, "sigma": sigma,
                             "direction": d, "k": k, "mean": float(np.mean([r["return"] for r in got if r["k"] == k]))})
    return rows


def trace_table(rows: list[dict]) -> str:
    head = ("| run | steps | theta's move (rms, relative) | validation change | random move of that size: mean abs "
            "change (max) |\n|---|---|---|---|---|\n")
    return head + "\n".join(f"| {r['run']} | {r['from_step']}-{r['to_step']} | {r['move']:.4f} | "
                             f"{r['val_from']:.0f} -> {r['val_to']:.0f} ({r['change']:+.0f}) | "
                             f"{r['random_abs_change']:.0f} ({r['random_max_abs_change']:.0f}) |" for r in rows)


def table(rows: list[dict], moves: dict[str, float], k: int) -> str:
    sigmas = sorted({r["sigma"] for r in rows})
    head = ("| run | theta | " + " | ".join(f"sigma {s:g}: mean (min-max)" for s in sigmas[1:])
            + " | best -> last move |\n" + "|---" * (len(sigmas) + 2) + "|\n")
    lines = []
    for run in dict.fromkeys(r["run"] for r in rows):
        at = [r for r in rows if r["run"] == run and r["k"] == k]
        base = next(r["mean"] for r in at if r["sigma"] == 0)
        cells = []
        for s in sigmas[1:]:
            v = [r["mean"] for r in at if r["sigma"] == s]
            cells.append(f"{np.mean(v):.0f} ({min(v):.0f}-{max(v):.0f})")
        lines.append(f"| {run} | {base:.0f} | " + " | ".join(cells) + f" | {moves[run]:.3f} |")
    return head + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="lightning_logs/session5")
    parser.add_argument("--variant", default="apt_cosine")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 3, 5])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.003, 0.01, 0.03])
    parser.add_argument("--directions", type=int, default=4)
    parser.add_argument("--k", type=int, default=5, help="the K the table reads (the csv has 0, 3 and k)")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--trace", nargs="*", default=[], help="run folders with a theta_trace.pt (theta_trace.py)")
    parser.add_argument("--name", default="sensitivity")
    parser.add_argument("--out", default=str(ROOT / "docs/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.trace:
        traced = [row for run in args.trace for row in trace_rows(Path(run), args.k, args.directions, args.episodes)]
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / f"{args.name}.csv", TRACE_COLUMNS, traced)
        md = trace_table(traced)
        (out / f"{args.name}.md").write_text(md + "\n")
        if out.resolve() == (ROOT / "docs/results").resolve():
            readme_table(args.name, md)
        print(md)
        return
    ks = tuple(sorted({0, 3, args.k}))
    rows, moves = [], {}
    for seed in args.seeds:
        run = Path(args.runs) / f"{args.variant}_s{seed}"
        rows += measure(run / "checkpoints" / "last.ckpt", args.sigmas, args.directions, ks, args.episodes)
        best, last = (weights(load(str(run / "checkpoints" / f"{c}.ckpt"))[0]) for c in ("best", "last"))
        moves[run.name] = relative_move(best, last)
        print(f"{run.name}: done", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{args.name}.csv", COLUMNS, rows)
    md = table(rows, moves, args.k)
    (out / f"{args.name}.md").write_text(md + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in moves:
        at = [r for r in rows if r["run"] == run and r["k"] == args.k]
        sig = sorted({r["sigma"] for r in at})
        ax.plot(sig, [np.mean([r["mean"] for r in at if r["sigma"] == s]) for s in sig], "o-", label=run)
        for r in at:
            ax.plot(r["sigma"], r["mean"], ".", color="grey", alpha=0.5)
    ax.set_xscale("symlog", linthresh=0.003)
    ax.set(xlabel="sigma (noise / rms of each tensor)", ylabel=f"validation return at K = {args.k}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{args.name}.png", dpi=100)
    if out.resolve() == (ROOT / "docs/results").resolve():
        readme_table(args.name, md)
    print(md)


if __name__ == "__main__":
    main()

"""Issue 10: how much of a validation curve's swing is the measurement itself?

The validation return at K is deterministic for fixed weights (fixed tasks and evaluation seeds), but CartPole's
episodes are chaotic in the weights: a change far smaller than one check interval's training redraws them. For each
checkpoint this adds Gaussian noise of a few sizes to every parameter of the initialisation (12 draws each) and
reports the standard deviation of the validation return at K: the swing that validation shows without any
training. Validation tasks only. Writes NAME.{csv,md} and, for the default NAME, the README's table.

    .venv/bin/python benchmarks/val_noise.py LABEL=PATH/TO.ckpt ... [--k 5] [--sigmas 1e-4 1e-3 3e-3] \\
        [--draws 12] [--out docs/results/val_noise]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
from runs import ROOT, readme_table

from mamldqn_pl.compare import load
from mamldqn_pl.evaluation import Protocol, evaluate_shared
from mamldqn_pl.report import write_csv

COLUMNS = ("checkpoint", "k", "sigma", "draws", "unperturbed", "mean", "std", "min", "max")


def val_return(model, dm, net: torch.nn.Module, protocol: Protocol) -> float:
    rows = evaluate_shared(net, dm.family, dm.val_tasks, model.adapt, model.inner, model.hparams.gamma, protocol)
    return sum(r["return"] for r in rows) / len(rows)


def measure(label: str, ckpt: str, k: int, sigmas: list[float], draws: int) -> list[dict]:
    model, dm = load(ckpt)
    protocol = Protocol.of(dm.hparams, [k], 5, [0, 1, 2])  # meta_val's episodes and evaluation seeds
    base = copy.deepcopy(model.init_net)
    unperturbed = val_return(model, dm, base, protocol)
    rows = []
    for sigma in sigmas:
        values = []
        for draw in range(draws):
            net = copy.deepcopy(base)
            generator = torch.Generator().manual_seed(draw)
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * sigma)
            values.append(val_return(model, dm, net, protocol))
        rows.append({"checkpoint": label, "k": k, "sigma": sigma, "draws": draws, "unperturbed": round(unperturbed, 1),
                     "mean": round(statistics.mean(values), 1), "std": round(statistics.pstdev(values), 1),
                     "min": round(min(values), 1), "max": round(max(values), 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="LABEL=PATH pairs")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1e-4, 1e-3, 3e-3])
    parser.add_argument("--draws", type=int, default=12)
    parser.add_argument("--out", default=str(ROOT / "docs/results/val_noise"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for item in args.checkpoints:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"val_noise.py: {item!r}: give LABEL=PATH to an existing checkpoint")
        rows += measure(label, path, args.k, args.sigmas, args.draws)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_suffix(".csv"), COLUMNS, rows)
    lines = [f"| checkpoint | noise sigma | validation at K = {args.k}: unperturbed | mean of {args.draws} draws | "
             "std | range |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['checkpoint']} | {r['sigma']:g} | {r['unperturbed']:.0f} | {r['mean']:.0f} | {r['std']:.1f} | "
              f"{r['min']:.0f}-{r['max']:.0f} |" for r in rows]
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(table + "\n")
    if out.resolve() == (ROOT / "docs/results/val_noise").resolve():
        readme_table("val_noise", table)
    print(table)


if __name__ == "__main__":
    main()

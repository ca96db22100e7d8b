"""Is a collapse driven by the share of flipped tasks in the training pool? The pool's task stream does not depend on
the policy (tasks come from their own generator, retirements from env-step counts, and every random draw of
collection has a policy-independent size), so a run's stream can be replayed without its network: here with a
constant Q (every action tied) and, as a check, with random Q-values, which must give the same stream. Per window
of meta-steps it writes the flipped share of the pool, of its adapted-policy slots and of its theta slots beside
the run's validation return (issue 10, eighth session).

    .venv/bin/python benchmarks/pool_composition.py --seeds 0 3 5 10 --runs lightning_logs/session5 \
        --variant apt_cosine --name pool_composition
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from runs import ROOT, readme_table
from seeds import validation_curves

from mamldqn_pl import MetaDQNDataModule
from mamldqn_pl.report import write_csv

COLUMNS = ("seed", "window_end", "pool_flipped", "adapted_slots_flipped", "theta_slots_flipped", "val_k5_at_end")


def stream(config: dict, seed: int, steps: int, random_q: bool) -> np.ndarray:
    """Per meta-step, the flipped share of the pool, of its adapted-policy slots and of theta's slots (the
    config's collect_adapted share of the pool's first slots acts with its adapted policy)."""
    pl.seed_everything(seed, verbose=False)
    dm = MetaDQNDataModule(**config["data"])
    dm._build(rank=0)
    generator = torch.Generator().manual_seed(123)  # its own: the stream's generators are not touched

    def q(obs: torch.Tensor) -> torch.Tensor:
        shape = (obs.shape[0], dm.n_actions)
        return torch.randn(shape, generator=generator) if random_q else torch.zeros(shape)

    dm.attach_policy(q, lambda: 0.05, lambda support, mask: q)
    n_adapted = round(dm.hparams.collect_adapted * dm.hparams.pool_size)
    shares = []
    for _ in range(steps):
        dm.next_batch()
        flipped = np.array([task.flip == -1 for task in dm.pool])
        shares.append((flipped.mean(), flipped[:n_adapted].mean() if n_adapted else np.nan,
                       flipped[n_adapted:].mean()))
    return np.array(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/cartpole.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=None, help="default: the config's trainer.max_steps")
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--check-steps", type=int, default=300, help="steps replayed with random Q as the check")
    parser.add_argument("--runs", default=str(ROOT / "lightning_logs/session5"))
    parser.add_argument("--variant", default="apt_cosine", help="the runs VARIANT_sSEED whose validation is shown")
    parser.add_argument("--name", default="pool_composition")
    parser.add_argument("--out", default=str(ROOT / "docs/results"),
                        help="the README table is rewritten only for this default")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())
    steps = args.steps or int(config["trainer"]["max_steps"])
    rows, summary = [], ["| seed | adapted slots flipped: whole run (range) | final third | theta slots, final "
                         "third | validation at K = 5, final third |", "|---|---|---|---|---|"]
    for seed in args.seeds:
        shares = stream(config, seed, steps, random_q=False)
        check = stream(config, seed, min(args.check_steps, steps), random_q=True)
        if not np.array_equal(check, shares[: len(check)], equal_nan=True):
            raise SystemExit(f"seed {seed}: the task stream depends on the policy; the replay does not hold")
        run = Path(args.runs) / f"{args.variant}_s{seed}"
        val = dict(validation_curves(run).get(5, [])) if (run / "metrics.csv").is_file() else {}
        for end in range(args.window, steps + 1, args.window):
            window = shares[end - args.window:end].mean(axis=0)
            rows.append({"seed": seed, "window_end": end, "pool_flipped": float(window[0]),
                         "adapted_slots_flipped": float(window[1]), "theta_slots_flipped": float(window[2]),
                         "val_k5_at_end": val.get(end, "")})
        third = shares[2 * steps // 3:]
        final_val = [v for s, v in val.items() if s > 2 * max(val, default=0) / 3]
        summary.append(f"| {seed} | {np.nanmean(shares[:, 1]):.2f} ({np.nanmin(shares[:, 1]):.2f}-"
                       f"{np.nanmax(shares[:, 1]):.2f}) | {np.nanmean(third[:, 1]):.2f} | {third[:, 2].mean():.2f} | "
                       f"{np.mean(final_val):.0f} |" if final_val else f"| {seed} | ... | | | |")
        print(summary[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{args.name}.csv", COLUMNS, rows)
    (out / f"{args.name}.md").write_text("\n".join(summary) + "\n")
    if out.resolve() == (ROOT / "docs/results").resolve():
        readme_table(args.name, "\n".join(summary))
    print(f"wrote {args.name}.csv/.md to {out}")


if __name__ == "__main__":
    main()

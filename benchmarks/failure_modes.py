"""Issue 10: how the adapted policies of a CartPole checkpoint fail, on the validation tasks.

A validation return below 500 says that episodes end early, not why. For each checkpoint this plays the validation
protocol at K (the meta-test protocol on the validation tasks: support, K inner steps, greedy episodes) and sorts
every greedy episode that ends before the time limit by its terminal state: the cart off the track (|x| > 2.4) or
the pole fallen (|angle| > 12 degrees). Beside it, the initialisation's own state value max_a Q(s, a) with the
pole upright and still, at x = -2.4, 0 and 2.4: the position sense that the inner loop's TD targets (from theta^-,
the initialisation's copy) hand to the adapted head. Validation tasks only; the returns equal `evaluate_init`'s.

`--targets-from LABEL=PATH ...` adds, for each checkpoint, a row per named checkpoint whose initialisation makes
the support's TD targets in its place (the same support data, the same inner steps from the checkpoint's own
weights): does handing one init another's values move its failures?

    .venv/bin/python benchmarks/failure_modes.py LABEL=PATH/TO.ckpt ... [--k 5] [--targets-from LABEL=PATH ...] \
        [--out docs/results/failure_modes]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from runs import ROOT, readme_table

from mamldqn_pl.compare import load
from mamldqn_pl.evaluation import Protocol, evaluate_init
from mamldqn_pl.report import write_csv
from mamldqn_pl.tasks.cartpole import BatchedCartPole, CartPoleFamily

COLUMNS = ("checkpoint", "targets_from", "k", "val_return", "episodes", "ended_early", "cart_off_track", "pole_fallen",
           "v_left", "v_centre", "v_right")
EDGES = (-2.4, 0.0, 2.4)


class Recorder:
    """Wraps a family's `batched` so that the greedy episodes' terminal next-states are kept. The protocol plays each
    of its episodes in a slot of its own and counts the slot's first one (a slot that is done keeps stepping until
    all are). The greedy loop steps every slot at once (`step(actions)`); the support's collector passes slot
    indices, and is left out."""

    def __init__(self, family) -> None:
        self.family, self.batched, self.terminal = family, family.batched, []

    def __enter__(self) -> Recorder:
        def batched(*args, **kwargs):
            env = self.batched(*args, **kwargs)
            step, ends = env.step, np.zeros(len(env), dtype=np.int64)

            def recording_step(actions, idx=None):
                out = step(actions, idx)
                if idx is None:
                    counted = ends == 0
                    self.terminal.extend(out[0][counted & out[2]])
                    ends[out[2] | out[3]] += 1
                return out

            env.step = recording_step
            return env

        self.family.batched = batched
        return self

    def __exit__(self, *exc) -> None:
        self.family.batched = self.batched


def failure_rows(label: str, ckpt: str, k: int, sources: dict[str, dict[str, torch.Tensor]]) -> list[dict]:
    """One checkpoint's validation return at K, its greedy episodes' early ends by cause, and theta's V(x): with its
    own values as the support's TD targets, then with each of `sources` (LABEL -> an initialisation's weights)."""
    model, dm = load(ckpt)
    if not isinstance(dm.family, CartPoleFamily):
        raise SystemExit(f"{ckpt}: family {dm.hparams.family!r}; failure_modes.py reads CartPole's terminal states")
    protocol = Protocol.of(dm.hparams, (k,), 5, (0, 1, 2))
    net = model.init_net
    obs = torch.zeros(len(EDGES), 4)
    obs[:, 0] = torch.tensor(EDGES)
    with torch.no_grad():
        v = net(obs).max(dim=1).values.tolist()
    out = []
    for source, target_params in [(label, None), *sources.items()]:
        with Recorder(dm.family) as recorder:
            rows = evaluate_init(net, dict(net.named_parameters()), dm.family, dm.val_tasks, model.adapt,
                                 model.inner, model.hparams.gamma, protocol, target_params=target_params)
        terminal = np.array(recorder.terminal).reshape(-1, 4)
        off = np.abs(terminal[:, 0]) > BatchedCartPole.x_threshold
        fallen = np.abs(terminal[:, 2]) > BatchedCartPole.theta_threshold
        ended = len(terminal)
        out.append({"checkpoint": label, "targets_from": source, "k": k,
                    "val_return": float(np.mean([r["return"] for r in rows])),
                    "episodes": len(rows) * protocol.episodes, "ended_early": ended,
                    "cart_off_track": float(off.mean()) if ended else 0.0,
                    "pole_fallen": float(fallen.mean()) if ended else 0.0,
                    "v_left": v[0], "v_centre": v[1], "v_right": v[2]})
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| checkpoint | support targets from | K | val return | episodes ended early | cart off the track | "
             "pole fallen | V(x = -2.4, 0, 2.4) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['targets_from']} | {r['k']} | {r['val_return']:.0f} | "
                     f"{r['ended_early']} of "
                     f"{r['episodes']} | {r['cart_off_track']:.0%} | {r['pole_fallen']:.0%} | "
                     f"{r['v_left']:.1f}, {r['v_centre']:.1f}, {r['v_right']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="LABEL=PATH pairs")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--targets-from", nargs="*", default=[], help="LABEL=PATH pairs whose inits make the targets")
    parser.add_argument("--out", default=str(ROOT / "docs/results/failure_modes"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs, sources = ([c.split("=", 1) for c in given] for given in (args.checkpoints, args.targets_from))
    for name, given, split in (("checkpoints", args.checkpoints, pairs),
                               ("--targets-from", args.targets_from, sources)):
        bad = [c for c, p in zip(given, split) if len(p) != 2 or not Path(p[1]).is_file()]
        if bad:
            raise SystemExit(f"{name}: {bad[0]!r} is not LABEL=PATH to an existing .ckpt")
    targets = {source: dict(load(other)[0].init_net.named_parameters()) for source, other in sources}
    rows = [row for label, path in pairs for row in failure_rows(label, path, args.k, targets)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_suffix(".csv"), COLUMNS, rows)
    table = markdown(rows)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    readme_table(out.name, table)


if __name__ == "__main__":
    main()

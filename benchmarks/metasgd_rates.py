"""Print the inner learning rates Meta-SGD learned (per inner step and weight tensor) in the checkpoints of
benchmarks/algorithms.py: does it rediscover head-only adaptation?

    .venv/bin/python benchmarks/metasgd_rates.py [RUNS_FOLDER]
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    runs = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "lightning_logs" / "bench_algorithms"
    for path in sorted(runs.glob("metasgd_s*/checkpoints/best.ckpt")):
        ckpt = torch.load(path, weights_only=True)
        rates = ckpt["state_dict"]["log_inner_lr"].exp()
        names = [k[len("net."):] for k in ckpt["state_dict"] if k.startswith("net.") and k.endswith(("weight", "bias"))]
        print(f"{path.parent.parent.name} (best checkpoint, step {ckpt['global_step']})")
        for step, row in enumerate(rates.tolist()):
            print(f"  inner step {step}: " + "  ".join(f"{n}={v:.4f}" for n, v in zip(names, row)))


if __name__ == "__main__":
    main()

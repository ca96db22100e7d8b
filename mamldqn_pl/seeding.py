"""Seeded torch Generators: every random draw in data and evaluation comes from one of these, so it can be
checkpointed as a tensor and reproduced."""

import numpy as np
import torch


def make_generator(*seeds: int) -> torch.Generator:
    """A torch Generator seeded from several integers (e.g. seed, rank, stream) without collisions."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([int(s) for s in seeds]).generate_state(1, np.uint64)[0] >> 1))
    return g

"""Schedules of a rate over meta-steps, functions of the step alone so that a resumed run follows the same curve."""

from __future__ import annotations

import math


def cosine(start: float, end: float, step: int, horizon: int) -> float:
    """From `start` at step 0 down to `end` at `horizon`, along half a cosine; `end` after it."""
    frac = min(step / horizon, 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * frac))

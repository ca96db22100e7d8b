"""Task families: what a task is, parameter sampling, env construction, batched envs."""

from mamldqn_pl.errors import ConfigError
from mamldqn_pl.tasks.cartpole import BatchedCartPole, CartPoleFamily
from mamldqn_pl.tasks.family import Task

FAMILIES = {"cartpole": CartPoleFamily}


def make_family(name: str, ranges: dict, flip: bool, what: str = "data.ranges") -> CartPoleFamily:
    """Build a task family by name; an unknown name is a one-line ConfigError."""
    if name not in FAMILIES:
        raise ConfigError(f"data.family: unknown family {name!r}; allowed: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name](ranges, flip=flip, what=what)


__all__ = ["BatchedCartPole", "CartPoleFamily", "FAMILIES", "Task", "make_family"]

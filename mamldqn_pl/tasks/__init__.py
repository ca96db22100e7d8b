"""Task families: what a task is, parameter sampling, env construction, batched envs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mamldqn_pl.errors import ConfigError
from mamldqn_pl.tasks.acrobot import AcrobotFamily, BatchedAcrobot
from mamldqn_pl.tasks.batched import BatchedEnv
from mamldqn_pl.tasks.cartpole import BatchedCartPole, CartPoleFamily
from mamldqn_pl.tasks.family import Family, Task
from mamldqn_pl.tasks.gym_generic import GymFamily, GymVectorEnv
from mamldqn_pl.tasks.mixed import MixedEnv, MixedFamily
from mamldqn_pl.tasks.mountaincar import BatchedMountainCar, MountainCarFamily
from mamldqn_pl.tasks.nav2d import BatchedNav2D, Nav2DEnv, Nav2DFamily

FAMILIES: dict[str, type[Family]] = {
    "cartpole": CartPoleFamily, "mountaincar": MountainCarFamily, "acrobot": AcrobotFamily, "nav2d": Nav2DFamily,
}
ALL_NAMES = (*FAMILIES, "gym", "mixed")


def make_family(name: str, ranges: Mapping[str, Sequence[float]] | None = None, flip: bool | None = None,
                env_id: str | None = None, env_kwargs: Mapping[str, Any] | None = None,
                members: Sequence[Mapping[str, Any]] | None = None, what: str = "data.ranges") -> Family:
    """Build a task family from its config; every mistake is a one-line ConfigError naming the value."""
    if name == "mixed":
        if ranges or env_id:
            raise ConfigError("data.family mixed: give ranges and env_id per member in data.members, not at top")
        if not members:
            raise ConfigError("data.members: a mixed family needs a list of members ({family: ..., ranges: ...})")
        built = []
        for j, spec in enumerate(members):
            spec = dict(spec)
            unknown = set(spec) - {"family", "ranges", "flip", "env_id", "env_kwargs", "pool_share"}
            if unknown:
                raise ConfigError(f"data.members[{j}]: unknown keys {sorted(unknown)}; allowed: family, ranges, "
                                  "flip, env_id, env_kwargs, pool_share")
            if spec.get("family") in (None, "mixed"):
                raise ConfigError(f"data.members[{j}].family: {spec.get('family')!r}; allowed: "
                                  f"{', '.join(n for n in ALL_NAMES if n != 'mixed')}")
            built.append(make_family(spec["family"], spec.get("ranges"), spec.get("flip"), spec.get("env_id"),
                                     spec.get("env_kwargs"), None, f"data.members[{j}].ranges"))
        options = dict(env_kwargs or {})
        unknown = set(options) - {"member_feature"}
        if unknown:
            raise ConfigError(f"data.env_kwargs: unknown keys {sorted(unknown)} for data.family mixed; allowed: "
                              "member_feature")
        feature = options.get("member_feature", False)
        if not isinstance(feature, bool):
            raise ConfigError(f"data.env_kwargs.member_feature: {feature!r}; allowed: true, false")
        return MixedFamily(built, [spec.get("pool_share") for spec in members], feature)
    if members:
        raise ConfigError(f"data.members: only used with data.family mixed, not {name!r}")
    if name == "gym":
        if not env_id:
            raise ConfigError("data.env_id: the gym family needs an env id, e.g. CartPole-v1")
        return GymFamily(env_id, ranges, flip, what)
    if env_id:
        raise ConfigError(f"data.env_id: only used with data.family gym, not {name!r}")
    if name not in FAMILIES:
        raise ConfigError(f"data.family: unknown family {name!r}; allowed: {', '.join(ALL_NAMES)}")
    kwargs = dict(env_kwargs or {})
    if kwargs and name != "nav2d":
        raise ConfigError(f"data.env_kwargs: {kwargs} not used by family {name!r}")
    try:
        return FAMILIES[name](ranges, flip, what, **kwargs)
    except TypeError:
        raise ConfigError(f"data.env_kwargs: {kwargs} not accepted by {name!r} (nav2d takes directions)") from None


__all__ = [
    "AcrobotFamily", "BatchedAcrobot", "BatchedCartPole", "BatchedEnv", "BatchedMountainCar", "BatchedNav2D",
    "CartPoleFamily", "FAMILIES", "Family", "GymFamily", "GymVectorEnv", "MixedEnv", "MixedFamily",
    "MountainCarFamily", "Nav2DEnv", "Nav2DFamily", "Task", "make_family",
]

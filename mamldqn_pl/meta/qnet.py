"""The Q-network and the split of its parameters into the fast (inner-loop) and shared parts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mamldqn_pl.meta.body import features

FastWeights = dict[str, Tensor]
QFn = Callable[[FastWeights, Tensor], Tensor]
ADAPT_MODES = ("all", "head")


class Scale(nn.Module):
    """Divides observations by fixed typical magnitudes (a buffer, never trained or adapted)."""

    def __init__(self, scale: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(list(scale), dtype=torch.float32))

    def forward(self, obs: Tensor) -> Tensor:
        return obs / self.scale


class QNetwork(nn.Module):
    """MLP Q(s, .): `body` maps observations to features, `head` (one Linear) maps features to action values.

    layer_norm puts a LayerNorm without weights after each hidden Linear (before its ReLU): the features' scale
    is then fixed, so an inner step's size on the head (lr x |features|^2) cannot drift during meta-training,
    and TD bootstrapping cannot grow them (Ball et al. 2023, Gallici et al. 2024). Without weights it adds no
    parameters, so every fast path and the per-task forward stay as they are.

    dynamics adds `dyn`, a second Linear on the body's features: each action's predicted outcome (s' - s and r,
    normalised), which the `dynamics` inner solver reads the support with (`meta.dynamics`); Q-values never use it."""

    def __init__(
        self, obs_dim: int, n_actions: int, hidden: Sequence[int] = (64, 64), obs_scale: Sequence[float] | None = None,
        layer_norm: bool = False, dynamics: bool = False,
    ) -> None:
        super().__init__()
        self.obs_dim, self.n_actions, self.hidden, self.layer_norm = obs_dim, n_actions, list(hidden), layer_norm
        self.dynamics = dynamics
        layers: list[nn.Module] = [Scale(obs_scale if obs_scale is not None else [1.0] * obs_dim)]
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h)] + ([nn.LayerNorm(h, elementwise_affine=False)] if layer_norm else [])
            layers += [nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_actions)
        self.dyn = nn.Linear(width, n_actions * (obs_dim + 1)) if dynamics else None

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(self.body(obs))

    def arch(self) -> dict:
        """The constructor's arguments: what rebuilds this network (plain data)."""
        arch = {"obs_dim": self.obs_dim, "n_actions": self.n_actions, "hidden": self.hidden,
                "obs_scale": self.body[0].scale.tolist(), "layer_norm": self.layer_norm}
        return arch | {"dynamics": True} if self.dynamics else arch


def _strip(params: FastWeights, prefix: str) -> FastWeights:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class AdaptSplit:
    """How the inner loop sees the network: `encode` runs the shared part once, `q_fn` runs the fast part.

    With adapt="head" (ANIL) the body is fixed during the inner loop, so its features are computed once per
    meta-step and only the head's small matrices go through the K inner steps. With adapt="all" (full MAML)
    `encode` is the identity and `q_fn` is the whole network.
    """

    fast: FastWeights
    encode: Callable[[Tensor], Tensor]
    q_fn: QFn
    batched_q_fn: QFn | None = None  # q_fn for per-task fast weights [T, ...] and inputs [T, N, .]: no vmap needed
    outcome_head: Callable[[Tensor], Tensor] | None = None  # features -> the `dyn` head's outputs (head-only)


def split_for_adaptation(net: QNetwork, params: FastWeights, adapt: str, fast_body: bool = False) -> AdaptSplit:
    """Split `params` (a dict of net's parameters, e.g. dict(net.named_parameters())) by adaptation mode.
    `fast_body`: with net's own parameters, `encode` is `meta.body.features` (bitwise net.body, fewer passes over
    the rows; the meta-step's fast paths)."""
    if adapt == "head":
        body = _strip(params, "body.")
        own = all(params.get(k) is p for k, p in net.named_parameters())  # then skip functional_call's swapping
        plain = net.body if own else lambda obs: functional_call(net.body, body, (obs,))
        return AdaptSplit(
            fast={k: v for k, v in params.items() if k.startswith("head.")},
            encode=(lambda obs: features(net, obs)) if own and fast_body else plain,
            q_fn=lambda fast, x: functional_call(net.head, _strip(fast, "head."), (x,)),
            batched_q_fn=lambda fast, x: per_task_linear(x, fast["head.weight"], fast["head.bias"]),
            outcome_head=None if net.dyn is None else net.dyn if own else (
                lambda x: functional_call(net.dyn, _strip(params, "dyn."), (x,))),
        )
    if adapt == "all":
        return AdaptSplit(
            fast=dict(params), encode=lambda obs: obs, q_fn=lambda fast, x: functional_call(net, fast, (x,)),
            batched_q_fn=lambda fast, x: per_task_forward(net, fast, x),
        )
    raise ValueError(f"adapt must be one of {ADAPT_MODES}, got {adapt!r}")


def per_task_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x [T, N, in] through T linear layers (weight [T, out, in], bias [T, out]) in one batched product; a layer
    shared by all T (weight [out, in]) is one ordinary product."""
    if weight.dim() == 2:
        return torch.nn.functional.linear(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def per_task_forward(net: QNetwork, weights: FastWeights, obs: Tensor) -> Tensor:
    """Q-values of T networks shaped like `net` on obs [T, N, obs_dim]: task t's weights are weights[name][t], or
    weights[name] itself for a layer all tasks share. What vmap over functional_call computes, as plain batched
    products (autograd through it is much cheaper)."""
    h = obs
    for i, layer in enumerate(net.body):
        if isinstance(layer, nn.Linear):
            h = per_task_linear(h, weights[f"body.{i}.weight"], weights[f"body.{i}.bias"])
        else:  # Scale, LayerNorm (no weights), ReLU
            h = layer(h)
    return per_task_linear(h, weights["head.weight"], weights["head.bias"])


def batched_q(net: QNetwork, params: FastWeights, fast: FastWeights, obs: Tensor) -> Tensor:
    """Q-values of many adapted networks at once: fast weights and obs carry a leading slot dimension; the rest
    of `params` is shared by all slots."""
    return per_task_forward(net, {**params, **fast}, obs)

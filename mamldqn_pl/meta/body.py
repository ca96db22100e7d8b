"""The body's forward over a meta-step's many rows with its ReLUs in place, bitwise `net.body`'s.

Why: with the meta-step's 8,192 rows, every pass over a [rows, width] tensor costs about as much as a small
operation's whole dispatch (README, "Speed"). `nn.ReLU` writes a fresh tensor; `relu_` overwrites the product it
reads, which is still in cache, and autograd keeps the output it needs for the backward either way (the Linear's
backward does not need its output). The rows are flattened to a matrix first: an in-place op on the view that
`F.linear` returns for a 3-d input would make autograd rebase the view (a copy in the backward). Values and
gradients equal `net.body`'s exactly (tests/test_body.py).

For a body of Scale, then Linear + ReLU pairs (no LayerNorm); for any other body `features` is `net.body` itself.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _linears(net: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of a body that is Scale, then Linear + ReLU pairs; None for any other body."""
    layers = list(net.body)[1:]
    if not layers or len(layers) % 2 or not all(
            isinstance(a, nn.Linear) and isinstance(r, nn.ReLU) for a, r in zip(layers[::2], layers[1::2])):
        return None
    return layers[::2]


def features(net: nn.Module, obs: Tensor) -> Tensor:
    """net.body(obs), bitwise, for obs [..., obs_dim] (see the module docstring)."""
    linears = _linears(net)
    if linears is None:
        return net.body(obs)
    x = net.body[0](obs)
    h = x.reshape(-1, x.shape[-1])
    for layer in linears:
        h = F.linear(h, layer.weight, layer.bias).relu_()
    return h.view(*x.shape[:-1], h.shape[-1])


def q_values(net: nn.Module, obs: Tensor) -> Tensor:
    """net(obs), bitwise, with the body run by `features` (theta^-'s values at the next observations)."""
    return net.head(features(net, obs))

"""The MAML inner loop as pure torch.func code: K functional TD steps per task, vmapped over tasks.

A batch here is a dict with `x` (inputs of the fast part: observations, or body features for head-only
adaptation), `actions` and `target` (precomputed TD targets), all of one task; `meta_losses` adds a task dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mamldqn_pl.meta.qnet import FastWeights, QFn
from mamldqn_pl.meta.td import td_loss

Batch = dict[str, Tensor]


@dataclass(frozen=True)
class InnerLoop:
    """The inner update: `steps` plain SGD steps of size `lr` on the support TD loss."""

    lr: float
    steps: int
    first_order: bool = False
    loss: str = "huber"

    def loss_of(self, q_fn: QFn, fast: FastWeights, batch: Batch) -> Tensor:
        return td_loss(q_fn(fast, batch["x"]), batch["actions"], batch["target"], self.loss)

    def step(self, q_fn: QFn, fast: FastWeights, batch: Batch) -> FastWeights:
        """One step theta' = theta - lr * grad; first order drops the second-order terms by detaching grad."""
        grads = torch.func.grad(lambda f: self.loss_of(q_fn, f, batch))(fast)
        if self.first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        return {k: w - self.lr * grads[k] for k, w in fast.items()}

    def adapt(self, q_fn: QFn, fast: FastWeights, batch: Batch) -> FastWeights:
        for _ in range(self.steps):
            fast = self.step(q_fn, fast, batch)
        return fast

    def query_loss(self, q_fn: QFn, fast: FastWeights, support: Batch, query: Batch) -> Tensor:
        """One task's meta-objective: the query TD loss of the weights adapted on the support batch."""
        return self.loss_of(q_fn, self.adapt(q_fn, fast, support), query)

    def meta_losses(self, q_fn: QFn, fast: FastWeights, support: Batch, query: Batch) -> Tensor:
        """Per-task query losses after adaptation, all tasks in one vmapped pass; shape [tasks]."""
        per_task = torch.func.vmap(lambda s, q: self.query_loss(q_fn, fast, s, q))
        return per_task(support, query)

    def losses_before(self, q_fn: QFn, fast: FastWeights, query: Batch) -> Tensor:
        """Per-task query losses of the unadapted weights (for logging), shape [tasks]."""
        return torch.func.vmap(lambda q: self.loss_of(q_fn, fast, q))(query)

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
    """The inner update: `steps` SGD steps on the support TD loss.

    The step size is `lr`, or with `log_lrs` (Meta-SGD, per step and per fast tensor, shape [steps, tensors])
    exp(log_lrs[k]) for step k: learned, and positive by construction; steps beyond those trained reuse the
    last row. With `normalize`, each TD loss is divided by the task's value scale (mean |target| + 1), so that
    the gradient no longer grows with the size of the values.
    """

    lr: float
    steps: int
    first_order: bool = False
    loss: str = "huber"
    log_lrs: Tensor | None = None
    normalize: bool = False

    def loss_of(self, q_fn: QFn, fast: FastWeights, batch: Batch) -> Tensor:
        loss = td_loss(q_fn(fast, batch["x"]), batch["actions"], batch["target"], self.loss)
        if self.normalize:
            loss = loss / (batch["target"].abs().mean() + 1.0).detach()
        return loss

    def step_sizes(self, fast: FastWeights, k: int) -> dict[str, Tensor | float]:
        if self.log_lrs is None:
            return {name: self.lr for name in fast}
        row = self.log_lrs[min(k, self.log_lrs.shape[0] - 1)].exp()
        return {name: row[i] for i, name in enumerate(fast)}

    def step(self, q_fn: QFn, fast: FastWeights, batch: Batch, k: int = 0) -> FastWeights:
        """Step k: theta' = theta - lr_k * grad; first order drops the second-order terms by detaching grad."""
        grads = torch.func.grad(lambda f: self.loss_of(q_fn, f, batch))(fast)
        if self.first_order:
            grads = {name: g.detach() for name, g in grads.items()}
        lrs = self.step_sizes(fast, k)
        return {name: w - lrs[name] * grads[name] for name, w in fast.items()}

    def adapt(self, q_fn: QFn, fast: FastWeights, batch: Batch) -> FastWeights:
        for k in range(self.steps):
            fast = self.step(q_fn, fast, batch, k)
        return fast

    def query_loss(self, q_fn: QFn, fast: FastWeights, support: Batch, query: Batch) -> Tensor:
        """One task's meta-objective: the query TD loss of the weights adapted on the support batch."""
        return self.loss_of(q_fn, self.adapt(q_fn, fast, support), query)

    def meta_losses(self, q_fn: QFn, fast: FastWeights, support: Batch, query: Batch) -> Tensor:
        """Per-task query losses after adaptation, all tasks in one vmapped pass; shape [tasks]."""
        per_task = torch.func.vmap(lambda s, q: self.query_loss(q_fn, fast, s, q))
        return per_task(support, query)

    def losses_before(self, q_fn: QFn, fast: FastWeights, query: Batch) -> Tensor:
        """Per-task losses of the unadapted weights, shape [tasks] (logging; the multitask objective)."""
        return torch.func.vmap(lambda q: self.loss_of(q_fn, fast, q))(query)

    def adapted(self, q_fn: QFn, fast: FastWeights, support: Batch) -> FastWeights:
        """Every task's adapted weights, with a leading task dimension (Reptile's outer step uses them)."""
        return torch.func.vmap(lambda s: self.adapt(q_fn, fast, s))(support)

"""The MAML inner loop as pure torch.func code: K functional TD steps per task, vmapped over tasks.

A batch here is a dict with `x` (inputs of the fast part: observations, or body features for head-only
adaptation), `actions` and `target` (precomputed TD targets), all of one task; `meta_losses` adds a task dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mamldqn_pl.meta.dynamics import dynamics_heads, dynamics_meta_losses
from mamldqn_pl.meta.head import linear_head_meta_losses, taken_q, td_derivatives
from mamldqn_pl.meta.qnet import FastWeights, QFn
from mamldqn_pl.meta.ridge import ridge_heads, ridge_meta_losses
from mamldqn_pl.meta.td import pointwise_td_loss

Batch = dict[str, Tensor]
LINEAR_HEAD = {"head.weight", "head.bias"}  # the fast weights of head-only adaptation (ANIL)


@dataclass(frozen=True)
class InnerLoop:
    """The inner update: `steps` SGD steps on the support TD loss.

    The step size is `lr`, or with `log_lrs` (Meta-SGD, per step and per fast tensor, shape [steps, tensors])
    exp(log_lrs[k]) for step k: learned, and positive by construction; steps beyond those trained reuse the
    last row. With `normalize`, each TD loss is divided by the task's value scale (mean |target| + 1), so that
    the gradient no longer grows with the size of the values. With `multi_step` (MAML++'s multi-step loss) the
    meta-objective is the mean query loss after each of the K steps, not only after the last: every K up to the
    trained one is trained to be good, so adaptation does not oscillate between steps.

    `advantage` (> 0: advantage learning, `meta.td.advantage_learning`) is part of the TD targets the steps fit;
    it lives here so that every place that builds a support batch for this inner loop (the module, meta-test,
    `adapt`) builds the same targets.

    `solver` "ridge" (head-only adaptation) replaces each SGD step by an exact proximal least-squares step of the
    head with strength `ridge_lambda`, later steps bootstrapping from the head reached (`meta.ridge`); the
    support batches then carry the refresh's fields. `lr`, `normalize` and the TD loss's kind do not enter its
    steps (the query loss keeps the kind). `solver` "dynamics" (head-only) adapts no TD loss at all: the step is
    the posterior over relabelings of the actions given the support's transitions (`dynamics_temperature`), and the
    head becomes (M W, M b) with M the posterior mean relabeling (`meta.dynamics`); `dynamics_weight` x the
    query's outcome error joins the meta-objective. Its batches carry the outcome fields `g` and `y`.

    `written_out` (default) takes the fast paths of `meta_losses`: a linear head's meta-objective and
    meta-gradient written out by hand (`meta.head`), else, given a `batched_q_fn`, all tasks' inner steps as one
    autograd graph over per-task weights [T, ...] (no vmap). False keeps the plain torch.func path everywhere:
    the reference the tests compare both against.
    """

    lr: float
    steps: int
    first_order: bool = False
    loss: str = "huber"
    log_lrs: Tensor | None = None
    normalize: bool = False
    multi_step: bool = False
    advantage: float = 0.0
    written_out: bool = True
    solver: str = "sgd"
    ridge_lambda: float = 1.0
    dynamics_weight: float = 1.0
    dynamics_temperature: float = 1.0

    @property
    def ridge(self) -> bool:
        return self.solver == "ridge"

    @property
    def dynamics(self) -> bool:
        return self.solver == "dynamics"

    def exact_heads(self, w: Tensor, b: Tensor, support: Batch, steps: int) -> list[tuple[Tensor, Tensor]]:
        """The heads after 0..steps steps of an exact solver (ridge or dynamics), for evaluation and collection
        (no meta-gradient): w [T, A, F], b [T, A]."""
        if self.ridge:
            return ridge_heads(w, b, support, self.ridge_lambda, steps)
        return dynamics_heads(w, b, support, self.dynamics_temperature, steps)

    def loss_of(self, q_fn: QFn, fast: FastWeights, batch: Batch) -> Tensor:
        return self.per_task_loss(q_fn(fast, batch["x"]), batch)

    def per_task_loss(self, q: Tensor, batch: Batch) -> Tensor:
        """The TD loss, mean over the transitions: of one task (q [N, A] -> a scalar) or of each of many
        (q [T, N, A] -> [T]); with `normalize` divided by the task's value scale."""
        q_sa = q.gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
        loss = pointwise_td_loss(q_sa, batch["target"], self.loss).mean(-1)
        if self.normalize:
            loss = loss / (batch["target"].abs().mean(-1) + 1.0).detach()
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

    def linear_head_step(self, fast: FastWeights, batch: Batch, k: int = 0) -> FastWeights:
        """Step k for many tasks at once when the fast part is the linear head (ANIL): fast holds head.weight
        [m, A, F] and head.bias [m, A], batch x [m, N, F]. The TD loss's gradient is written out with
        `meta.head`'s pieces (Huber: clamp(error, -1, 1), MSE: 2 error, over N), so no autograd runs; it equals
        `step` under vmap (tested). For evaluation and collection, where no meta-gradient flows through the inner
        loop. SGD steps only: ridge and dynamics steps go through `exact_heads`."""
        if self.solver != "sgd":
            raise ValueError(f"linear_head_step takes SGD steps; {self.solver} steps are InnerLoop.exact_heads")
        w, b = fast["head.weight"], fast["head.bias"]
        x, target = batch["x"], batch["target"]
        onehot = torch.nn.functional.one_hot(batch["actions"], w.shape[1]).to(x.dtype)
        error = taken_q(x, w, b, onehot) - target
        d = td_derivatives(error, self.loss)[0] / error.shape[1]
        if self.normalize:
            d = d / (target.abs().mean(dim=1, keepdim=True) + 1.0)
        per_action = onehot * d.unsqueeze(-1)  # [m, N, A]
        lrs = self.step_sizes(fast, k)
        return {"head.weight": w - lrs["head.weight"] * torch.bmm(per_action.transpose(1, 2), x),
                "head.bias": b - lrs["head.bias"] * per_action.sum(dim=1)}

    def adapt(self, q_fn: QFn, fast: FastWeights, batch: Batch) -> FastWeights:
        for k in range(self.steps):
            fast = self.step(q_fn, fast, batch, k)
        return fast

    def query_loss(self, q_fn: QFn, fast: FastWeights, support: Batch, query: Batch) -> Tensor:
        """One task's meta-objective: the query TD loss of the weights adapted on the support batch (with
        multi_step: its mean over the weights after each inner step)."""
        if not self.multi_step or self.steps == 0:
            return self.loss_of(q_fn, self.adapt(q_fn, fast, support), query)
        total = 0.0
        for k in range(self.steps):
            fast = self.step(q_fn, fast, support, k)
            total = total + self.loss_of(q_fn, fast, query)
        return total / self.steps

    def meta_losses(self, q_fn: QFn, fast: FastWeights, support: Batch, query: Batch,
                    batched_q_fn: QFn | None = None) -> Tensor:
        """Per-task query losses after adaptation, all tasks in one pass; shape [tasks]."""
        if self.solver != "sgd" and (set(fast) != LINEAR_HEAD or fast["head.weight"].dim() != 2):
            raise ValueError(f"the {self.solver} inner solver adapts a shared linear head only (adapt head)")
        if self.dynamics:
            return dynamics_meta_losses(fast["head.weight"], fast["head.bias"], support, query,
                                        self.dynamics_temperature, self.steps, self.loss, self.first_order,
                                        self.dynamics_weight)
        if self.ridge:
            return ridge_meta_losses(fast["head.weight"], fast["head.bias"], support, query, self.ridge_lambda,
                                     self.steps, self.loss, self.first_order, self.multi_step)
        if self.written_out and self.log_lrs is None and set(fast) == LINEAR_HEAD and fast["head.weight"].dim() == 2:
            return linear_head_meta_losses(fast["head.weight"], fast["head.bias"], support, query, self.lr,
                                           self.steps, self.loss, self.first_order, self.normalize, self.multi_step)
        if self.written_out and batched_q_fn is not None:
            return self.per_task_weights_losses(batched_q_fn, fast, support, query)
        per_task = torch.func.vmap(lambda s, q: self.query_loss(q_fn, fast, s, q))
        return per_task(support, query)

    def per_task_weights_losses(self, batched_q_fn: QFn, fast: FastWeights, support: Batch, query: Batch) -> Tensor:
        """`meta_losses` without vmap: the weights are expanded to one copy per task and the inner gradient of the
        summed per-task losses is each task's own (tasks share no weights after the expand), so one
        torch.autograd.grad per step adapts every task; create_graph keeps the second-order terms."""
        n_tasks = support["x"].shape[0]
        fast = {k: v.unsqueeze(0).expand(n_tasks, *v.shape) for k, v in fast.items()}
        total = 0.0
        for k in range(self.steps):
            losses = self.per_task_loss(batched_q_fn(fast, support["x"]), support)
            grads = torch.autograd.grad(losses.sum(), list(fast.values()), create_graph=not self.first_order,
                                        retain_graph=True)
            lrs = self.step_sizes(fast, k)
            fast = {name: w - lrs[name] * g for (name, w), g in zip(fast.items(), grads)}
            if self.multi_step:
                total = total + self.per_task_loss(batched_q_fn(fast, query["x"]), query) / self.steps
        if self.multi_step and self.steps:
            return total
        return self.per_task_loss(batched_q_fn(fast, query["x"]), query)

    def losses_before(self, q_fn: QFn, fast: FastWeights, query: Batch) -> Tensor:
        """Per-task losses of the unadapted weights, shape [tasks] (logging; the multitask objective)."""
        return torch.func.vmap(lambda q: self.loss_of(q_fn, fast, q))(query)

    def adapted(self, q_fn: QFn, fast: FastWeights, support: Batch) -> FastWeights:
        """Every task's adapted weights, with a leading task dimension (Reptile's outer step uses them)."""
        return torch.func.vmap(lambda s: self.adapt(q_fn, fast, s))(support)

    def adapted_no_grad(self, q_fn: QFn, fast: FastWeights, support: Batch) -> FastWeights:
        """`adapted` for collection and evaluation (nothing flows back): the written-out step for a linear head."""
        if set(fast) != LINEAR_HEAD:
            return {k: v.detach() for k, v in self.adapted(q_fn, fast, support).items()}
        m = support["x"].shape[0]
        fast = {k: v.detach().expand(m, *v.shape) for k, v in fast.items()}
        if self.solver != "sgd":  # the K steps share one factorisation (or posterior) of the support
            w, b = self.exact_heads(fast["head.weight"], fast["head.bias"], support, self.steps)[-1]
            return {"head.weight": w, "head.bias": b}
        for k in range(self.steps):
            fast = self.linear_head_step(fast, support, k)
        return fast

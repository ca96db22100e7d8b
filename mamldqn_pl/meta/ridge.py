"""Head adaptation by exact least-squares steps: the `ridge` inner solver (`model.inner_solver ridge`).

Why: an SGD step on the head moves it by lr x the TD gradient, and on ill-conditioned features K <= 5 stable
steps leave most of the least-squares fit undone (nav2d: the meta-init's SGD head plays about -15 at K = 5 on the
validation tasks, a per-task least-squares head on the same features about -8; docs/families.md). Each ridge step
solves, per task and per action, the head's squared TD fit to the support exactly, with a proximal term that
keeps it near the head it starts from:

    [w_a; b_a]_{k+1} = argmin  sum_{n: a_n = a} (w . x_n + b - y_n)^2 + lambda ||[w; b] - [w_a; b_a]_k||^2

(closed form: (X_a^T X_a + lambda I)^-1 (X_a^T y + lambda [w_a; b_a]_k), X_a the support rows of action a with a
column of ones). The first step's targets y are the support's TD targets from theta^- (as for SGD); each later
step refreshes them from the head it has reached, y = r + discount x max_a' Q_k(s', a') with the same body
(fitted Q iteration): K steps are K Bellman backups on the support, not K partial moves toward one. An action the
support never took keeps its head (X_a = 0). Every step is a batched linear solve (the dual form, one Cholesky
factor per task shared by the K steps: `ridge_system`), so the meta-gradient to the body and the initial head is
ordinary autograd through the factorisation (the closed-form solvers of Bertinetto et al. 2019, R2-D2; least
squares on a DQN's last layer: Levine et al. 2017, LS-DQN); the refreshed targets, like every TD target here, get
no gradient.

Shapes: w [T, A, F], b [T, A] (per-task heads), x [T, N, F] features, actions [T, N], target [T, N]; the refresh
reads the support's `x_next` [T, N, F] (features at the next observations), `ret` [T, N] (the (n-step) discounted
rewards), `discount` [T, N] (gamma^steps, 0 where the episode terminated) and, for a mixed family, `valid`
[T, 1, A] (the actions each task has).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamldqn_pl.meta.head import heads_query_losses
from mamldqn_pl.meta.td import bootstrap_parts

REFRESH_KEYS = ("x_next", "ret", "discount")


def refresh_fields(data: dict[str, Tensor], encode, gamma: float, valid: Tensor | None = None) -> dict[str, Tensor]:
    """What a support batch built from sampled `data` ([T, N] fields) needs for the refresh: the body's features
    at the next observations (`encode`, no gradient), the rewards' and the bootstrap's parts of the TD target,
    and the valid actions [T, 1, A] where a family masks some."""
    ret, discount = bootstrap_parts(data, gamma)
    with torch.no_grad():
        fields = {"x_next": encode(data["next_obs"]), "ret": ret, "discount": discount}
    return fields if valid is None else {**fields, "valid": valid}


def ridge_system(x: Tensor, actions: Tensor, n_actions: int, lam: float) -> tuple[Tensor, ...]:
    """What every step on the same support shares, in the dual form: with X_a action a's rows (a column of ones
    added), a step is start_a + X_a^T (X_a X_a^T + lambda I)^-1 (y_a - X_a start_a), the same solution as the
    primal one (push-through identity) with one N x N system per task instead of one (F + 1)-square system per
    task and action: the kernel of rows of different actions is zeroed, so the system is block-diagonal by
    action. Returns the rows [T, N, F + 1], the one-hot actions [T, N, A] and the Cholesky factor [T, N, N]
    (only targets and start change between steps: K steps factorise once)."""
    xa = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)
    onehot = torch.nn.functional.one_hot(actions, n_actions).to(x.dtype)
    same = (actions.unsqueeze(2) == actions.unsqueeze(1)).to(x.dtype)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return xa, onehot, torch.linalg.cholesky(torch.bmm(xa, xa.transpose(1, 2)) * same + lam * eye)


def ridge_solve(system: tuple[Tensor, ...], w: Tensor, b: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """One step from the heads (w, b) toward the targets on the factorised support `system`."""
    xa, onehot, chol = system
    start = torch.cat([w, b.unsqueeze(-1)], dim=-1)  # [T, A, F + 1]
    taken = (torch.bmm(xa, start.transpose(1, 2)) * onehot).sum(-1)  # Q_start(s_n, a_n), [T, N]
    alpha = torch.cholesky_solve((target - taken).unsqueeze(-1), chol)  # [T, N, 1]
    new = start + torch.bmm(onehot.transpose(1, 2), alpha * xa)
    return new[..., :-1], new[..., -1]


def refreshed_targets(w: Tensor, b: Tensor, support: dict[str, Tensor]) -> Tensor:
    """The support's TD targets bootstrapped from the heads (w, b) at the next states; no gradient."""
    missing = [k for k in REFRESH_KEYS if k not in support]
    if missing:
        raise ValueError(f"a ridge step after the first needs the support's {', '.join(missing)} (refresh)")
    with torch.no_grad():
        q_next = torch.baddbmm(b.unsqueeze(1), support["x_next"], w.transpose(1, 2))
        if "valid" in support:
            q_next = q_next.masked_fill(~support["valid"], float("-inf"))
        return support["ret"] + support["discount"] * q_next.max(dim=-1).values


def ridge_heads(w: Tensor, b: Tensor, support: dict[str, Tensor], lam: float, steps: int,
                first_order: bool = False) -> list[tuple[Tensor, Tensor]]:
    """The heads after 0, 1, ..., `steps` ridge steps (w, b: per-task heads [T, A, F], [T, A]). first_order keeps
    each step's values but passes the meta-gradient through it as through the identity (first-order MAML)."""
    heads = [(w, b)]
    system = ridge_system(support["x"], support["actions"], w.shape[1], lam) if steps else None
    for k in range(steps):
        target = support["target"] if k == 0 else refreshed_targets(*heads[-1], support)
        new_w, new_b = ridge_solve(system, *heads[-1], target.detach())
        if first_order:
            new_w = heads[-1][0] + (new_w - heads[-1][0]).detach()
            new_b = heads[-1][1] + (new_b - heads[-1][1]).detach()
        heads.append((new_w, new_b))
    return heads


def ridge_meta_losses(w: Tensor, b: Tensor, support: dict[str, Tensor], query: dict[str, Tensor], lam: float,
                      steps: int, kind: str = "huber", first_order: bool = False, multi_step: bool = False) -> Tensor:
    """Per-task query TD losses [T] after `steps` ridge steps from the shared head (w [A, F], b [A]); with
    multi_step their mean over the heads after each step (MAML++)."""
    t = support["x"].shape[0]
    heads = ridge_heads(w.expand(t, *w.shape), b.expand(t, *b.shape), support, lam, steps, first_order)
    scored = heads[1:] if multi_step and steps else heads[-1:]
    return sum(heads_query_losses(*head, query, kind) for head in scored) / len(scored)

"""Head adaptation that reads the support's transitions: the `dynamics` inner solver (`model.inner_solver dynamics`).

Why: on the sparse families a TD fit of 200 support steps carries little about which way the actions point (on a
flipped MountainCar task the one-step TD targets of two actions differ by about the action gap, docs/families.md),
while the transitions themselves show it at once: s' - s against the action taken. Here the network has a second
head, g(s) [A, D], a meta-learned prediction of what each *canonical* action b does from s (the normalised s' - s
and r, D = obs_dim + 1). A task is described by a mixing matrix M [A, A]: its action a acts as sum_b M[a, b] x
canonical action b. Each inner step solves M per task and action exactly from the support's transitions, a proximal
least-squares fit

    M_{k+1}[a] = argmin_m  sum_{n: a_n = a} || sum_b m_b g_b(s_n) - y_n ||^2 + lambda || m - M_k[a] ||^2

from M_0 = I (K = 0 is the plain network; later steps move M further toward the plain least-squares fit), and the
adapted Q-head is (M W, M b): task action a gets the values of the canonical actions it mixes. For a hidden flip
(a permutation P) this is exact: Q_task(s, a) = Q(s, P a), and max_a Q is the same in every task, so one shared
target network serves them all. The meta-objective is the query TD loss of the adapted head plus `weight` x the
query's outcome error under the same M (which trains g directly); its gradient reaches W, b, the body and g through
the solves (one A x A Cholesky factor per task and action, shared by the K steps). What it cannot express: a task
difference that is not a mixing of the actions' effects (Nav2D's goal, physics changes that act on every action
alike); there M stays near I and the plain network is what is left.

Shapes: w [A, F] or [T, A, F], b [A] or [T, A]; a batch carries `actions` [T, N], `g` [T, N, A, D] (the outcome head
at its rows' features) and `y` [T, N, D] (the rows' outcomes, divided by the support's scale: `outcome_scale`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mamldqn_pl.meta.td import pointwise_td_loss

DYNAMICS_KEYS = ("g", "y")


def outcomes(data: dict[str, Tensor]) -> Tensor:
    """Each transition's outcome [..., obs_dim + 1]: s' - s of one env step (`next_obs_1` where the batch holds
    n-step windows, whose `next_obs` is the window's last) and the step's reward."""
    step_next = data.get("next_obs_1", data["next_obs"])
    return torch.cat([step_next - data["obs"], data["rewards"].unsqueeze(-1)], dim=-1)


def outcome_scale(y: Tensor) -> Tensor:
    """Per task and outcome dimension, the root mean square over the rows of `y` [T, N, D] -> [T, 1, D]: what
    makes a position change, a velocity change and a reward weigh alike in the fit. Taken from the support alone
    (at meta-test it is all there is), no gradient."""
    return y.detach().pow(2).mean(dim=-2, keepdim=True).sqrt().clamp_min(1e-6)


def dynamics_fields(outcome_head: Callable[[Tensor], Tensor], x: Tensor, data: dict[str, Tensor],
                    scale: Tensor | None = None) -> dict[str, Tensor]:
    """`g` and `y` for rows with features x [T, N, F] sampled as `data`; `scale` [T, 1, D] from the task's support
    (default: these rows are the support)."""
    y = outcomes(data)
    y = y / (outcome_scale(y) if scale is None else scale)
    g = outcome_head(x)
    return {"g": g.view(*x.shape[:-1], -1, y.shape[-1]), "y": y}


def mixings(support: dict[str, Tensor], lam: float, steps: int) -> list[Tensor]:
    """The mixing matrices [T, A, A] after 0, 1, ..., `steps` proximal least-squares steps on the support. An action
    the support never took keeps its row (only the proximal term acts on it)."""
    g, y = support["g"], support["y"]
    t, _, a, _ = g.shape
    onehot = torch.nn.functional.one_hot(support["actions"], a).to(g.dtype)
    mixing = [torch.eye(a, dtype=g.dtype, device=g.device).expand(t, a, a)]
    if not steps:
        return mixing
    normal = torch.einsum("tna,tnbd,tncd->tabc", onehot, g, g)  # [T, A, A, A]: action a's normal matrix
    rhs = torch.einsum("tna,tnbd,tnd->tab", onehot, g, y)  # [T, A, A]
    eye = torch.eye(a, dtype=g.dtype, device=g.device)
    chol = torch.linalg.cholesky(normal + lam * eye)
    for _ in range(steps):
        mixing.append(torch.cholesky_solve((rhs + lam * mixing[-1]).unsqueeze(-1), chol).squeeze(-1))
    return mixing


def mixed_head(w: Tensor, b: Tensor, mixing: Tensor) -> tuple[Tensor, Tensor]:
    """The head (M W, M b) per task: w [A, F] or [T, A, F], b [A] or [T, A], mixing [T, A, A]."""
    return torch.matmul(mixing, w), torch.matmul(mixing, b.unsqueeze(-1)).squeeze(-1)


def dynamics_heads(w: Tensor, b: Tensor, support: dict[str, Tensor], lam: float, steps: int,
                   first_order: bool = False) -> list[tuple[Tensor, Tensor]]:
    """The heads [T, A, F], [T, A] after 0, ..., `steps` steps. first_order: the mixings' values, without the
    meta-gradient through the solves (to the outcome head and the support's features)."""
    t = support["g"].shape[0]
    w, b = w.expand(t, *w.shape[-2:]), b.expand(t, b.shape[-1])
    return [mixed_head(w, b, m.detach() if first_order else m) for m in mixings(support, lam, steps)]


def outcome_errors(mixing: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Per task [T]: the mean squared error of the outcomes the mixing predicts for the batch's rows."""
    onehot = torch.nn.functional.one_hot(batch["actions"], mixing.shape[-1]).to(mixing.dtype)
    rows = torch.bmm(onehot, mixing)  # [T, N, A]: row n's mixing weights over the canonical actions
    predicted = torch.einsum("tnb,tnbd->tnd", rows, batch["g"])
    return (predicted - batch["y"]).pow(2).mean(dim=(-2, -1))


def dynamics_meta_losses(w: Tensor, b: Tensor, support: dict[str, Tensor], query: dict[str, Tensor], lam: float,
                         steps: int, kind: str = "huber", first_order: bool = False, multi_step: bool = False,
                         weight: float = 1.0) -> Tensor:
    """Per-task meta-objective [T]: the query TD loss of the head after `steps` steps (with multi_step the mean over
    the heads after each step) plus `weight` x the query's outcome error under the last mixing."""
    ms = mixings(support, lam, steps)
    t = support["g"].shape[0]
    w, b = w.expand(t, *w.shape[-2:]), b.expand(t, b.shape[-1])
    scored = ms[1:] if multi_step and steps else ms[-1:]

    def td_loss(mixing: Tensor) -> Tensor:
        hw, hb = mixed_head(w, b, mixing.detach() if first_order else mixing)
        q = torch.baddbmm(hb.unsqueeze(1), query["x"], hw.transpose(1, 2))
        q_sa = q.gather(-1, query["actions"].unsqueeze(-1)).squeeze(-1)
        return pointwise_td_loss(q_sa, query["target"].detach(), kind).mean(-1)

    total = sum(td_loss(m) for m in scored) / len(scored)
    return total + weight * outcome_errors(ms[-1], query) if weight > 0 else total

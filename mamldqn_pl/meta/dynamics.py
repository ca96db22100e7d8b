"""Head adaptation that reads the support's transitions: the `dynamics` inner solver (`model.inner_solver dynamics`).

Why: on the sparse families a TD fit of 200 support steps carries little about which way the actions point (on a
flipped MountainCar task the one-step TD targets of two actions differ by about the action gap, docs/families.md),
while the transitions themselves show it at once: s' - s against the action taken. Here the network has a second
head, g(s) [A, D], a meta-learned prediction of what each *canonical* action b does from s (the normalised s' - s
and r, D = obs_dim + 1). A task may relabel its actions: its action a acts as canonical action P(a), P one of the A!
permutations (the identity among them). The inner step is the posterior over P given the support's transitions
(uniform prior, Gaussian outcome noise of `temperature`):

    p(P | support) = softmax_P( - sum_n mean_d (g_{P(a_n)}(s_n) - y_n)_d^2 / temperature )

and the adapted Q-head is (M W, M b) with M = sum_P p(P) P, the posterior mean of the relabeling matrix: task
action a gets the values of the canonical action it most likely is. K = 0 is the identity (the plain network); one
step is exact, so every K >= 1 is the same. The meta-objective is the query TD loss of the adapted head plus
`weight` x the query's outcome error expected under the posterior (which trains g to tell the relabelings apart);
its gradient reaches W, b, the body and g through the softmax. For a hidden flip this is exact once the posterior is
sharp: Q_task(s, a) = Q(s, P a), and max_a Q is the same in every task.

Why a discrete posterior and not a least-squares mixing (the first form of this solver, screened in the eighteenth
session, docs/families.md): the actions' effects are collinear in MountainCar, Acrobot and CartPole (a force or
torque of -1, 0, +1 along one direction), so a free mixing matrix is not identified by the transitions, and the
outcome head co-adapted with the solved mixings into a degenerate fit (near-equal predictions for every action, M
with rows summing to ~3.8 or entries of -10) while the Q-values stayed flat. A relabeling is identified by one
direction. What it cannot express: a task difference that is not a relabeling of the actions (Nav2D's goal,
physics ranges); there the posterior sits on the identity and the plain network is what is left.

In a mixed family (tasks with fewer actions than the network's, the rest masked) a task's relabelings are those of
its own actions: the prior puts no mass on one that would move a masked action (`allowed`).

Shapes: w [A, F] or [T, A, F], b [A] or [T, A]; a batch carries `actions` [T, N], `g` [T, N, A, D] (the outcome head
at its rows' features) and `y` [T, N, D] (the rows' outcomes, divided by the support's scale: `outcome_scale`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

from mamldqn_pl.meta.head import heads_query_losses


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
                    scale: Tensor | None = None, valid: Tensor | None = None) -> dict[str, Tensor]:
    """`g` and `y` for rows with features x [T, N, F] sampled as `data`; `scale` [T, 1, D] from the task's support
    (default: these rows are the support); `valid` [T, A], a mixed family's action mask, rides along as "valid"
    (the posterior then keeps to the relabelings of each task's own actions)."""
    y = outcomes(data)
    y = y / (outcome_scale(y) if scale is None else scale)
    g = outcome_head(x)
    fields = {"g": g.view(*x.shape[:-1], -1, y.shape[-1]), "y": y}
    return fields if valid is None else fields | {"valid": valid.reshape(x.shape[0], -1).bool()}


def permutations(n_actions: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """All n! permutation matrices [H, A, A] (the identity first): the relabelings a task may apply to the actions."""
    eye = torch.eye(n_actions, dtype=dtype, device=device)
    return torch.stack([eye[list(p)] for p in itertools.permutations(range(n_actions))])


def relabel_errors(batch: dict[str, Tensor], hypotheses: Tensor) -> Tensor:
    """Per task and relabeling [T, H]: the sum over the batch's rows of the mean squared outcome error when the
    task's action a acts as the canonical action the relabeling maps it to."""
    onehot = torch.nn.functional.one_hot(batch["actions"], hypotheses.shape[-1]).to(batch["g"].dtype)
    predicted = torch.einsum("tna,hab,tnbd->thnd", onehot, hypotheses, batch["g"])
    return (predicted - batch["y"].unsqueeze(1)).pow(2).mean(-1).sum(-1)


def allowed(valid: Tensor, hypotheses: Tensor) -> Tensor:
    """[T, H]: the relabelings a task with valid actions `valid` [T, A] may apply: those that map each action it
    lacks (a mixed family's masked actions) to itself, i.e. permute its own actions among themselves. The
    identity is always one of them."""
    fixed = hypotheses.diagonal(dim1=1, dim2=2) > 0.5  # [H, A]: the relabeling leaves action a where it is
    return (fixed.unsqueeze(0) | valid.unsqueeze(1)).all(-1)


def posterior(support: dict[str, Tensor], hypotheses: Tensor, temperature: float) -> Tensor:
    """The posterior over the relabelings [T, H] given the support's transitions, Gaussian outcome noise:
    softmax(-errors / temperature). Prior: uniform, over the relabelings of each task's own actions where the
    support carries a mixed family's action mask ("valid"), else over all of them."""
    logits = -relabel_errors(support, hypotheses) / temperature
    if "valid" in support:
        logits = logits.masked_fill(~allowed(support["valid"], hypotheses), float("-inf"))
    return torch.softmax(logits, dim=-1)


def mixings(support: dict[str, Tensor], temperature: float, steps: int) -> list[Tensor]:
    """The mixing matrices [T, A, A] after 0, 1, ..., `steps` steps: the identity, then the posterior mean of the
    relabeling matrix (the posterior is exact after one look at the support: every later K is the same)."""
    g = support["g"]
    t, _, a, _ = g.shape
    eye = torch.eye(a, dtype=g.dtype, device=g.device).expand(t, a, a)
    if not steps:
        return [eye]
    hypotheses = permutations(a, g.dtype, g.device)
    mean = torch.einsum("th,hab->tab", posterior(support, hypotheses, temperature), hypotheses)
    return [eye] + [mean] * steps


def mixed_head(w: Tensor, b: Tensor, mixing: Tensor) -> tuple[Tensor, Tensor]:
    """The head (M W, M b) per task: w [A, F] or [T, A, F], b [A] or [T, A], mixing [T, A, A]."""
    return torch.matmul(mixing, w), torch.matmul(mixing, b.unsqueeze(-1)).squeeze(-1)


def dynamics_heads(w: Tensor, b: Tensor, support: dict[str, Tensor], temperature: float, steps: int,
                   first_order: bool = False) -> list[tuple[Tensor, Tensor]]:
    """The heads [T, A, F], [T, A] after 0, ..., `steps` steps. first_order: the mixings' values, without the
    meta-gradient through the posterior (to the outcome head and the support's features)."""
    t = support["g"].shape[0]
    w, b = w.expand(t, *w.shape[-2:]), b.expand(t, b.shape[-1])
    return [mixed_head(w, b, m.detach() if first_order else m) for m in mixings(support, temperature, steps)]


def dynamics_meta_losses(w: Tensor, b: Tensor, support: dict[str, Tensor], query: dict[str, Tensor],
                         temperature: float, steps: int, kind: str = "huber", first_order: bool = False,
                         weight: float = 1.0) -> Tensor:
    """Per-task meta-objective [T]: the query TD loss of the adapted head plus `weight` x the query's mean outcome
    error, expected under the support's posterior over the relabelings (the identity alone at K = 0): what trains
    the outcome head to tell the relabelings apart. Every K >= 1 adapts alike, so MAML++'s multi-step mean is the
    last step's loss."""
    t, a = support["g"].shape[0], support["g"].shape[2]
    w, b = w.expand(t, *w.shape[-2:]), b.expand(t, b.shape[-1])
    hypotheses = permutations(a, w.dtype, w.device)
    if steps:
        belief = posterior(support, hypotheses, temperature)
    else:  # K = 0: the plain network, the identity (the first hypothesis)
        belief = torch.nn.functional.one_hot(torch.zeros(t, dtype=torch.long, device=w.device),
                                             len(hypotheses)).to(w.dtype)
    mixing = torch.einsum("th,hab->tab", belief, hypotheses)
    loss = heads_query_losses(*mixed_head(w, b, mixing.detach() if first_order else mixing), query, kind)
    if weight > 0:
        errors = relabel_errors(query, hypotheses) / query["actions"].shape[1]
        loss = loss + weight * (belief * errors).sum(-1)
    return loss

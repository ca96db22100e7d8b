"""The DQN temporal-difference loss as pure functions (no modules, no state), so each can be tested alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TD_LOSSES = ("huber", "mse")


def _valid_only(q: Tensor, action_mask: Tensor | None) -> Tensor:
    """Q with the actions a task does not have at -inf, so that no max or argmax picks them."""
    return q if action_mask is None else q.masked_fill(~action_mask, float("-inf"))


def td_target(rewards: Tensor, terminated: Tensor, next_q_target: Tensor, gamma: float | Tensor,
              action_mask: Tensor | None = None, next_q_online: Tensor | None = None) -> Tensor:
    """r + gamma * (1 - terminated) * max_a' Q(s', a'; theta^-); bootstraps through truncation, never termination.

    `action_mask` (broadcastable to next_q_target) keeps actions a task does not have out of the max. `gamma`
    may be a tensor of per-transition discounts (n-step windows of different lengths). With `next_q_online`
    (Double DQN) the online network picks a' = argmax_a' Q(s', a'; theta) and theta^- values it: a max over
    noisy estimates no longer picks their upward errors.
    """
    with torch.no_grad():
        next_q_target = _valid_only(next_q_target, action_mask)
        if next_q_online is None:
            value = next_q_target.max(dim=-1).values
        else:
            picked = _valid_only(next_q_online, action_mask).argmax(dim=-1, keepdim=True)
            value = next_q_target.gather(-1, picked).squeeze(-1)
        return rewards + gamma * (1.0 - terminated) * value


def n_step_returns(reward_window: Tensor, steps: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """sum_{j<k} gamma^j r_{t+j} and gamma^k of each window, k = `steps` the transitions it holds."""
    powers = torch.arange(reward_window.shape[-1], device=reward_window.device, dtype=reward_window.dtype)
    returns = (reward_window * gamma ** powers).sum(dim=-1)
    return returns, torch.full_like(returns, gamma) ** steps.to(returns.dtype)


def n_step_td_target(reward_window: Tensor, steps: Tensor, terminated: Tensor, next_q_target: Tensor,
                     gamma: float, action_mask: Tensor | None = None, next_q_online: Tensor | None = None) -> Tensor:
    """sum_{j<k} gamma^j r_{t+j} + gamma^k (1 - terminated) max_a' Q(s_{t+k}, a'; theta^-), with k = `steps`
    the transitions the window holds (rewards past them are zero) and s_{t+k}, terminated those of its last."""
    returns, discount = n_step_returns(reward_window, steps, gamma)
    return td_target(returns, terminated, next_q_target, discount, action_mask, next_q_online)


def td_target_of(data: dict[str, Tensor], next_q_target: Tensor, gamma: float,
                 action_mask: Tensor | None = None, next_q_online: Tensor | None = None) -> Tensor:
    """The TD target of a sampled batch: n-step when the buffer gave reward windows (data.n_step > 1); Double
    DQN given the online network's values `next_q_online`."""
    if "reward_window" in data:
        return n_step_td_target(data["reward_window"], data["steps"], data["terminated"], next_q_target, gamma,
                                action_mask, next_q_online)
    return td_target(data["rewards"], data["terminated"], next_q_target, gamma, action_mask, next_q_online)


def advantage_learning(target: Tensor, q_now_target: Tensor, actions: Tensor, alpha: float,
                       action_mask: Tensor | None = None) -> Tensor:
    """Advantage learning (Bellemare et al. 2016): target - alpha * (max_b Q(s, b; theta^-) - Q(s, a; theta^-)).

    Why: a TD step moves Q by the size of the TD errors, and where the actions' values differ by less (Acrobot:
    a median gap of 0.045 against errors of 0.5, `benchmarks/inner_step_diagnosis.py`) it reorders them. This
    operator lowers every non-greedy action's target by alpha times its gap, so fixed points have gaps about
    1 / (1 - alpha) times larger and the greedy action is the same. `q_now_target` holds theta^-'s values at s."""
    with torch.no_grad():
        q_now_target = _valid_only(q_now_target, action_mask)
        taken = q_now_target.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return target - alpha * (q_now_target.max(dim=-1).values - taken)


def bootstrap_parts(data: dict[str, Tensor], gamma: float) -> tuple[Tensor, Tensor]:
    """A sampled batch's TD target split as target = ret + discount * max_a' Q(s', a'): the (n-step) discounted
    rewards and gamma^steps (0 where the episode terminated). A ridge inner step refreshes the support's targets
    from the head it has reached with these (`meta.ridge`)."""
    with torch.no_grad():
        if "reward_window" in data:
            ret, discount = n_step_returns(data["reward_window"], data["steps"], gamma)
        else:
            ret, discount = data["rewards"], torch.full_like(data["rewards"], gamma)
        return ret, discount * (1.0 - data["terminated"].to(ret.dtype))


def batch_targets(data: dict[str, Tensor], q_target, gamma: float, action_mask: Tensor | None = None,
                  advantage: float = 0.0, q_online=None) -> Tensor:
    """The TD targets of a sampled [tasks, N] batch, as training and meta-test both build them: theta^- (the
    function `q_target`) at the next observations, n-step when the batch has reward windows, Double DQN given
    the online network `q_online`, advantage learning when `advantage` > 0 (theta^- at the observations too)."""
    with torch.no_grad():
        online = None if q_online is None else q_online(data["next_obs"])
        target = td_target_of(data, q_target(data["next_obs"]), gamma, action_mask, online)
        if advantage:
            target = advantage_learning(target, q_target(data["obs"]), data["actions"], advantage, action_mask)
        return target


def pointwise_td_loss(q_sa: Tensor, target: Tensor, kind: str = "huber") -> Tensor:
    """The TD loss of each transition, unreduced: smooth L1 (beta 1) or squared error of Q(s, a) to its target."""
    if kind == "huber":
        return F.smooth_l1_loss(q_sa, target, reduction="none")
    if kind == "mse":
        return F.mse_loss(q_sa, target, reduction="none")
    raise ValueError(f"td loss must be one of {TD_LOSSES}, got {kind!r}")


def td_loss(q: Tensor, actions: Tensor, target: Tensor, kind: str = "huber") -> Tensor:
    """Mean TD error of Q(s, a) against a fixed target; `q` holds all actions' values, shape [..., N, A]."""
    q_sa = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return pointwise_td_loss(q_sa, target, kind).mean()

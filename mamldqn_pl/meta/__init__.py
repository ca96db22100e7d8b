"""Pure meta-learning functions: Q-network split, TD loss, vmapped inner loop. Imports no Lightning."""

from mamldqn_pl.meta.inner import InnerLoop
from mamldqn_pl.meta.qnet import ADAPT_MODES, AdaptSplit, QNetwork, batched_q, split_for_adaptation
from mamldqn_pl.meta.td import TD_LOSSES, advantage_learning, batch_targets, td_loss, td_target, td_target_of

__all__ = [
    "ADAPT_MODES", "AdaptSplit", "InnerLoop", "QNetwork", "TD_LOSSES", "advantage_learning", "batch_targets",
    "batched_q", "split_for_adaptation", "td_loss", "td_target", "td_target_of",
]

"""Replay buffers, the collector, and the LightningDataModule."""

from mamldqn_pl.data.collector import Collector, epsilon_greedy
from mamldqn_pl.data.datamodule import MetaDQNDataModule
from mamldqn_pl.data.replay import ReplayBuffers

__all__ = ["Collector", "MetaDQNDataModule", "ReplayBuffers", "epsilon_greedy"]

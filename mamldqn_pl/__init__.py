"""mamldqn_pl: meta-learn a DQN initialisation with MAML, in PyTorch Lightning and torch.func."""

from mamldqn_pl.callbacks import MetaTestEvaluation, TargetNetworkSync
from mamldqn_pl.data import MetaDQNDataModule
from mamldqn_pl.module import MAMLDQN

__all__ = ["MAMLDQN", "MetaDQNDataModule", "MetaTestEvaluation", "TargetNetworkSync"]
__version__ = "0.1.0"

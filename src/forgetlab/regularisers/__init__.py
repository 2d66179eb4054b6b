"""Add-ons that combine with any method through the config: LwF is a loss term, replay a data source."""

from forgetlab.regularisers.lwf import DistillationLoss
from forgetlab.regularisers.replay import ReplayBuffer

__all__ = ["DistillationLoss", "ReplayBuffer"]

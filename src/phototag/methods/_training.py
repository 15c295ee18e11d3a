"""Early stopping shared by the methods trained with gradient descent: keep the best validation epoch."""

from __future__ import annotations

import copy

from torch import nn


class BestEpoch:
    """Tracks a validation score per epoch, keeps a copy of the best weights and says when patience ran out.

    Example:
        >>> tracker = BestEpoch(patience=2)
        >>> net = nn.Linear(2, 1)
        >>> [tracker.update(v, epoch, net) for epoch, v in enumerate([0.5, 0.7, 0.6, 0.6], 1)]
        [False, False, False, True]
        >>> tracker.best, tracker.epoch
        (0.7, 2)
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best = -float("inf")
        self.epoch = 0  # 1-based epoch of the best score; 0 = none yet
        self.state: dict | None = None
        self.stale = 0

    def update(self, value: float, epoch: int, module: nn.Module) -> bool:
        """Record ``value`` for 1-based ``epoch``; returns True when training should stop."""
        if value > self.best:
            self.best, self.epoch, self.stale = value, epoch, 0
            self.state = copy.deepcopy(module.state_dict())
        else:
            self.stale += 1
        return self.stale >= self.patience

    def restore(self, module: nn.Module) -> bool:
        """Load the best weights into ``module``; False when no validation score was ever recorded."""
        if self.state is None:
            return False
        module.load_state_dict(self.state)
        return True

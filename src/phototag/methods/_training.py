"""Training pieces shared by the methods fitted with gradient descent: feature standardisation and early stopping
(keep the best validation epoch)."""

from __future__ import annotations

import copy

import numpy as np
from torch import nn


def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and scale ``(d,)`` for standardisation; constant dims get a floor, not a tiny divisor."""
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (n_images, d). Got shape {x.shape} instead.")
    std = x.std(axis=0)
    return x.mean(axis=0).astype(np.float32), np.maximum(std, 0.1 * float(std.mean()) + 1e-6).astype(np.float32)


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

"""Training pieces shared by the methods fitted with gradient descent: feature standardisation and early stopping
(keep the best validation epoch)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
from torch import nn


def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and scale ``(d,)`` for standardisation; constant dims get a floor, not a tiny divisor."""
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (n_images, d). Got shape {x.shape} instead.")
    std = x.std(axis=0)
    return x.mean(axis=0).astype(np.float32), np.maximum(std, 0.1 * float(std.mean()) + 1e-6).astype(np.float32)


class StandardizedNet(nn.Module):
    """Base of the networks on raw backbone features: buffers ``mean`` and ``scale`` ``(d_in,)`` standardise the
    input, and are saved with the weights so a loaded model needs no training data."""

    def __init__(self, d_in: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(d_in))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised features ``(n, d_in)`` of raw features ``(n, d_in)``."""
        return (x - self.mean) / self.scale

    def fit_standardization(self, x: np.ndarray) -> None:
        """Set ``mean`` and ``scale`` from the training features ``(n, d_in)`` (see :func:`feature_stats`)."""
        mean, scale = feature_stats(x)
        self.mean.copy_(torch.from_numpy(mean))
        self.scale.copy_(torch.from_numpy(scale))


class BestEpoch:
    """Tracks a validation score per epoch, keeps a copy of the best weights and says when patience ran out.

    With ``metric`` (the key of the validation score in each epoch's record), :meth:`end_epoch` and :meth:`finish`
    do the bookkeeping of a whole epoch loop, and :attr:`history` collects the records. Scores are compared with
    ``>``, so a tuple such as ``(f1, map)`` breaks ties on its later items; ``floor`` is what the first score must beat.

    Example:
        >>> tracker = BestEpoch(patience=2)
        >>> net = nn.Linear(2, 1)
        >>> [tracker.update(v, epoch, net) for epoch, v in enumerate([0.5, 0.7, 0.6, 0.6], 1)]
        [False, False, False, True]
        >>> tracker.best, tracker.epoch
        (0.7, 2)
        >>> tracker = BestEpoch(patience=2, metric="val_map")
        >>> records = [{"epoch": e, "train_loss": 0.1, "val_map": v} for e, v in enumerate([0.5, 0.4, 0.3], 1)]
        >>> [tracker.end_epoch(record, net) for record in records]
        [False, False, True]
        >>> tracker.finish(net, logging.getLogger(__name__), "best validation mAP"), len(tracker.history)
        (1, 3)
    """

    def __init__(self, patience: int, *, metric: str | None = None, floor: Any = -float("inf")):
        self.patience = patience
        self.metric = metric
        self.best = floor
        self.epoch = 0  # 1-based epoch of the best score; 0 = none yet
        self.state: dict | None = None
        self.stale = 0
        self.history: list[dict[str, Any]] = []

    def update(self, value: float | tuple[float, ...], epoch: int, module: nn.Module) -> bool:
        """Record ``value`` for 1-based ``epoch``; returns True when training should stop."""
        if value > self.best:
            self.best, self.epoch, self.stale = value, epoch, 0
            self.state = copy.deepcopy(module.state_dict())
        else:
            self.stale += 1
        return self.stale >= self.patience

    def end_epoch(self, record: dict[str, Any], module: nn.Module, bar: Any = None) -> bool:
        """Append ``record`` (``epoch``, ``train_loss`` and, after a validation pass, the ``metric``) to
        :attr:`history`, tracking its validation score and showing both numbers on the tqdm ``bar``; returns True
        when training should stop (never without a validation score)."""
        stop = False
        if self.metric is not None and self.metric in record:
            stop = self.update(record[self.metric], record["epoch"], module)
            if bar is not None:
                bar.set_postfix(**{"loss": f"{record['train_loss']:.4f}", self.metric: f"{record[self.metric]:.4f}"})
        self.history.append(record)
        return stop

    def finish(self, module: nn.Module, logger: logging.Logger, label: str) -> int:
        """Load the best weights into ``module``, logging ``"{label} {best} at epoch {epoch}"``; returns the 1-based
        epoch the weights come from (the last one run when no validation score was recorded)."""
        if self.restore(module):
            logger.info("%s %.4f at epoch %d", label, self.best, self.epoch)
        return self.epoch or len(self.history)

    def new_stage(self, module: nn.Module) -> None:
        """Start another training stage from the best weights so far; patience counts afresh within the stage."""
        self.restore(module)
        self.stale = 0

    def restore(self, module: nn.Module) -> bool:
        """Load the best weights into ``module``; False when no validation score was ever recorded."""
        if self.state is None:
            return False
        module.load_state_dict(self.state)
        return True

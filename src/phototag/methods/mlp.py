"""``mlp``: the seeds' multi-label head trained on cached backbone features.

Dense 512 ReLU → Dropout 0.5 → sigmoid over the vocabulary, weighted binary cross-entropy (``pos_weight``), Adam,
early stopping on validation mAP with the best epoch kept (the head of the multi-label CNN tagger, without fine-tuning
the backbone). Training uses torch; scoring is numpy only, so a saved head tags photos where torch is not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics import mean_average_precision
from .base import TaggingMethod, register_method

log = logging.getLogger(__name__)


@dataclass
class MLPConfig:
    hidden: int = 512  # width of the hidden ReLU layer
    dropout: float = 0.5  # dropout after the hidden layer
    pos_weight: float | str = "auto"  # BCE weight of positives: a number (seed: 10), "auto" = sqrt(neg/pos) per tag
    max_pos_weight: float = 30.0  # cap on the per-tag "auto" weight
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 1e-4  # Adam L2 penalty
    batch_size: int = 64  # images per step
    max_epochs: int = 200  # upper bound on epochs
    patience: int = 15  # epochs without validation-mAP improvement before stopping
    epochs_without_val: int = 40  # fixed number of epochs when no validation data is given
    seed: int = 0  # seeds initialisation, dropout and shuffling


def _head_network(d_in: int, hidden: int, n_out: int, dropout: float):
    """The head as a torch module (training only); its state dict is what :func:`head_scores` reads."""
    from torch import nn

    from ._training import StandardizedNet

    class _Head(StandardizedNet):
        def __init__(self) -> None:
            super().__init__(d_in)
            self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

        def forward(self, x):
            return self.net(self.standardize(x))

    return _Head()


#: The head's arrays, as saved: standardisation, then Dense → ReLU → (dropout) → Dense.
HEAD_ARRAYS = ("mean", "scale", "net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias")


def head_scores(arrays: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Sigmoid scores ``(n, n_tags)`` of features ``(n, d)`` through a head's saved arrays, in numpy."""
    z = (x - arrays["mean"]) / arrays["scale"]
    hidden = np.maximum(z @ arrays["net.0.weight"].T + arrays["net.0.bias"], 0.0)
    logits = hidden @ arrays["net.3.weight"].T + arrays["net.3.bias"]
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)


@register_method("mlp")
class MLPTagger(TaggingMethod):
    """Two-layer sigmoid head on pooled features; scores are sigmoid probabilities."""

    description = "seed 001's head on cached features: Dense 512 ReLU, Dropout 0.5, sigmoid; weighted BCE, Adam"
    Config = MLPConfig
    data_keys = ("features",)

    def _build(self, d_in: int, n_tags: int):
        return _head_network(d_in, self.config.hidden, n_tags, self.config.dropout)

    def _pos_weight(self, targets: np.ndarray):
        import torch

        value = self.config.pos_weight
        if isinstance(value, str):
            if value != "auto":
                raise ValueError(f"mlp pos_weight must be a number or 'auto'. Got {value!r} instead.")
            pos = targets.sum(axis=0)
            ratio = (len(targets) - pos) / np.maximum(pos, 1.0)
            return torch.from_numpy(np.clip(np.sqrt(ratio), 1.0, self.config.max_pos_weight).astype(np.float32))
        return torch.full((targets.shape[1],), float(value))

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        import torch
        from torch import nn
        from tqdm.auto import tqdm

        from ._training import BestEpoch

        n = self.check_inputs(inputs)
        y = self.check_targets(targets, n)
        x = np.asarray(inputs["features"], dtype=np.float32)
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        head = self._build(x.shape[1], y.shape[1])
        head.fit_standardization(x)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=self._pos_weight(y))
        optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        have_val = val_inputs is not None and val_targets is not None and len(val_targets) > 0
        if have_val:
            xv = torch.from_numpy(np.asarray(val_inputs["features"], dtype=np.float32))
            yv = (np.asarray(val_targets) > 0).astype(np.float32)
        epochs = cfg.max_epochs if have_val else cfg.epochs_without_val
        tracker = BestEpoch(cfg.patience, metric="val_map")
        self.history_: list[dict[str, float]] = tracker.history
        bar = tqdm(range(epochs), desc="mlp", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            head.train()
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(head(xt[idx]), yt[idx])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            record = {"epoch": epoch + 1, "train_loss": total / n}
            if have_val:
                head.eval()
                with torch.no_grad():
                    val_scores = torch.sigmoid(head(xv)).numpy()
                record["val_map"] = mean_average_precision(yv, val_scores)
            if tracker.end_epoch(record, head, bar):
                break
        self.best_epoch_ = tracker.finish(head, log, "mlp: best validation mAP")
        self.arrays_ = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in head.state_dict().items()}
        self.n_features_ = x.shape[1]
        self.n_tags_ = y.shape[1]
        return self

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        x = np.asarray(inputs["features"], dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features_:
            raise ValueError(f"mlp expects features of shape (n, {self.n_features_}). Got {x.shape} instead.")
        return head_scores(self.arrays_, x)

    def get_state(self):
        arrays = dict(self.arrays_)
        return arrays, {
            "n_tags": int(self.n_tags_),
            "n_features": int(self.n_features_),
            "best_epoch": self.best_epoch_,
        }

    def set_state(self, arrays, meta):
        self.n_tags_, self.n_features_ = int(meta["n_tags"]), int(meta["n_features"])
        self.best_epoch_ = meta.get("best_epoch")
        hidden = self.config.hidden
        expected = {
            "mean": (self.n_features_,),
            "scale": (self.n_features_,),
            "net.0.weight": (hidden, self.n_features_),
            "net.0.bias": (hidden,),
            "net.3.weight": (self.n_tags_, hidden),
            "net.3.bias": (self.n_tags_,),
        }
        shapes = {k: tuple(np.shape(arrays[k])) for k in HEAD_ARRAYS if k in arrays}
        if shapes != expected:
            raise ValueError(f"mlp weights have shapes {shapes}; this model's config expects {expected}.")
        self.arrays_ = {k: np.asarray(arrays[k], dtype=np.float32) for k in HEAD_ARRAYS}

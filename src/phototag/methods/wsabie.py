"""``wsabie``: WSABIE (Weston, Bengio, Usunier 2011) on cached backbone features.

A linear map V projects standardised image features into a joint space where each tag has an embedding W_t; the
score is the inner product ⟨W_t, V x⟩. Trained with the WARP loss: for each (image, relevant tag) pair, irrelevant
tags are drawn at random until one violates the margin; the number of draws N estimates the relevant tag's rank
r ≈ ⌊(n_tags − 1) / N⌋ and the hinge is weighted by L(r) = Σ_{j≤r} 1/j, which optimises precision at the top of
the ranking. Embedding norms are kept ≤ ``max_norm`` (the paper's constraint, acting as the regulariser).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._ranking import check_features, fit_global_platt, platt, positive_pairs, validation_f1
from ._training import BestEpoch, StandardizedNet
from .base import TaggingMethod, register_method

log = logging.getLogger(__name__)


@dataclass
class WSABIEConfig:
    embed_dim: int = 256  # size of the joint image/tag space
    margin: float = 1.0  # hinge margin of WARP
    max_trials: int = 100  # irrelevant tags drawn per relevant pair while searching a violation (caps the cost)
    max_norm: float = 4.0  # every tag embedding and every column of V is kept at norm <= max_norm
    lr: float = 1e-3  # Adam learning rate
    batch_size: int = 64  # images per step
    max_epochs: int = 100  # upper bound on epochs
    patience: int = 10  # epochs without validation-F1 improvement before stopping
    epochs_without_val: int = 30  # fixed number of epochs when no validation data is given
    seed: int = 0  # seeds initialisation, sampling and shuffling


class _WSABIENet(StandardizedNet):
    def __init__(self, d_in: int, n_tags: int, embed_dim: int):
        super().__init__(d_in)
        self.project = nn.Linear(d_in, embed_dim, bias=False)
        self.tags = nn.Parameter(torch.randn(n_tags, embed_dim) / np.sqrt(embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.standardize(x)) @ self.tags.T

    @torch.no_grad()
    def clip_norms(self, max_norm: float) -> None:
        for matrix, dim in ((self.tags, 1), (self.project.weight, 0)):
            norms = matrix.norm(dim=dim, keepdim=True).clamp(min=max_norm)
            matrix.mul_(max_norm / norms)


def warp_loss(
    scores: torch.Tensor, targets: torch.Tensor, margin: float, max_trials: int, generator: torch.Generator
) -> torch.Tensor:
    """WARP loss of a batch: ``scores`` and ``targets`` ``(batch, n_tags)``; mean over relevant pairs.

    Draws ``max_trials`` tags per relevant pair at once and takes the first irrelevant one that violates the margin,
    which is the sequential sampling of the paper done in parallel.
    """
    n_tags = scores.shape[1]
    rows, pos = positive_pairs(targets)
    if len(rows) == 0:
        return scores.sum() * 0.0
    draws = torch.randint(0, n_tags, (len(rows), max_trials), generator=generator)
    pos_scores = scores[rows, pos]
    neg_scores = scores[rows.unsqueeze(1), draws]
    violating = (targets[rows.unsqueeze(1), draws] <= 0) & (neg_scores > pos_scores.unsqueeze(1) - margin)
    found = violating.any(dim=1)
    if not found.any():
        return scores.sum() * 0.0
    first = violating.float().argmax(dim=1)
    trials = (first + 1).float()
    rank = torch.floor((n_tags - 1) / trials).long()
    harmonic = torch.cumsum(1.0 / torch.arange(1, n_tags + 1, dtype=scores.dtype), 0)
    weight = torch.where(rank > 0, harmonic[(rank - 1).clamp(min=0)], torch.zeros_like(trials))
    violation = margin - pos_scores + neg_scores.gather(1, first.unsqueeze(1)).squeeze(1)
    return (weight * violation * found).sum() / len(rows)


@register_method("wsabie")
class WSABIETagger(TaggingMethod):
    """Linear image projection and tag embeddings in one space, inner-product score, WARP loss.

    Scores are ``sigmoid(a·s + b)`` of the inner product with one global (a, b) (rankings unchanged).
    """

    description = "ranking baseline: features projected into a tag-embedding space, trained with the WARP ranking loss"
    Config = WSABIEConfig
    data_keys = ("features",)

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        from tqdm.auto import tqdm

        n = self.check_inputs(inputs)
        y = self.check_targets(targets, n)
        cfg = self.config
        for name in ("embed_dim", "max_trials", "batch_size"):
            if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
                raise ValueError(f"The '{name}' parameter of wsabie must be an int >= 1. Got {getattr(cfg, name)!r}.")
        x = np.asarray(inputs["features"], dtype=np.float32)
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        net = _WSABIENet(x.shape[1], y.shape[1], cfg.embed_dim)
        net.fit_standardization(x)
        have_val = val_inputs is not None and val_targets is not None and len(val_targets) > 0
        if have_val:
            xv = torch.from_numpy(check_features(val_inputs, x.shape[1], "wsabie"))
            yv = (np.asarray(val_targets) > 0).astype(np.float32)
        epochs = cfg.max_epochs if have_val else cfg.epochs_without_val
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        tracker = BestEpoch(cfg.patience, metric="val_f1")
        self.history_: list[dict[str, float]] = tracker.history
        bar = tqdm(range(epochs), desc="wsabie", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                loss = warp_loss(net(xt[idx]), yt[idx], cfg.margin, cfg.max_trials, generator)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                net.clip_norms(cfg.max_norm)
                total += loss.item() * len(idx)
            record = {"epoch": epoch + 1, "train_loss": total / n}
            if have_val:
                with torch.no_grad():
                    record["val_f1"] = validation_f1(yv, net(xv).numpy())
            if tracker.end_epoch(record, net, bar):
                break
        self.best_epoch_ = tracker.finish(net, log, "wsabie: best validation per-tag F1@5")
        self.net_ = net.eval()
        self.n_features_ = x.shape[1]
        self.n_tags_ = y.shape[1]
        self.platt_ = fit_global_platt(self._raw_scores(x), y, seed=cfg.seed)
        return self

    def _raw_scores(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net_(torch.from_numpy(x)).numpy()

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        return platt(self._raw_scores(check_features(inputs, self.n_features_, "wsabie")), *self.platt_)

    def get_state(self):
        arrays = {k: v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}
        meta = {"n_tags": int(self.n_tags_), "n_features": int(self.n_features_), "platt": list(self.platt_)}
        return arrays, {**meta, "best_epoch": self.best_epoch_}

    def set_state(self, arrays, meta):
        self.n_tags_, self.n_features_ = int(meta["n_tags"]), int(meta["n_features"])
        self.platt_ = tuple(meta["platt"])
        self.best_epoch_ = meta.get("best_epoch")
        net = _WSABIENet(self.n_features_, self.n_tags_, self.config.embed_dim)
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
        self.net_ = net.eval()

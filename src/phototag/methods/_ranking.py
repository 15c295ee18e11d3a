"""Pieces shared by the ranking methods (``drel``, ``wsabie``, ``svm``): negative sampling, score calibration
and validation tracking. Pure functions on arrays/tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..metrics import mean_image_average_precision, per_tag_at_k


def check_features(inputs: Mapping[str, Any], n_features: int, name: str) -> np.ndarray:
    x = np.asarray(inputs["features"], dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"{name} expects features of shape (n, {n_features}). Got {x.shape} instead.")
    return x


def positive_pairs(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, tags)`` of every relevant (image, tag) pair of a ``(batch, n_tags)`` 0/1 tensor."""
    rows, tags = torch.nonzero(targets > 0, as_tuple=True)
    return rows, tags


def sample_negatives(
    targets: torch.Tensor, rows: torch.Tensor, n_samples: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_samples`` uniformly drawn tags per positive pair, and a mask of the draws that are really irrelevant.

    Drawing from all tags and masking the relevant ones out costs O(pairs × n_samples), instead of enumerating every
    (image, relevant, irrelevant) triplet (O(pairs × n_tags)).

    Returns:
        ``(negatives, valid)``, both ``(n_pairs, n_samples)``.
    """
    n_tags = targets.shape[1]
    negatives = torch.randint(0, n_tags, (len(rows), n_samples), generator=generator)
    valid = targets[rows.unsqueeze(1), negatives] <= 0
    return negatives, valid


def fit_global_platt(scores: np.ndarray, targets: np.ndarray, *, max_pairs: int = 200_000, seed: int = 0) -> tuple:
    """``(a, b)`` of ``sigmoid(a · s + b)`` fitted by logistic regression on (score, relevant) pairs.

    A single monotone map keeps every ranking (per image and per tag) unchanged; it only puts the scores on a
    probability-like scale so the default decision threshold (0.3) means something.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = (np.asarray(targets) > 0).ravel().astype(np.float64)
    if y.min() == y.max():
        return 1.0, 0.0
    if len(s) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(s), max_pairs, replace=False)
        s, y = s[pick], y[pick]
    from sklearn.linear_model import LogisticRegression

    center, spread = s.mean(), s.std() + 1e-12
    clf = LogisticRegression(C=1e4).fit(((s - center) / spread)[:, None], y)
    a = float(clf.coef_[0, 0]) / spread
    b = float(clf.intercept_[0]) - a * center
    # A degenerate fit (a <= 0) would reverse the ranking; keep the order in that case.
    return (a, b) if a > 0 else (1.0, 0.0)


def platt(scores: np.ndarray, a: float | np.ndarray, b: float | np.ndarray) -> np.ndarray:
    z = np.asarray(scores, dtype=np.float64) * a + b
    return (1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))).astype(np.float32)


def validation_f1(val_targets: np.ndarray, scores: np.ndarray, k: int = 5) -> float:
    """Per-tag F1 at top-``k`` (the Corel5k protocol), the quantity the ranking methods early-stop on.

    With ``k`` or fewer tags every tag is in every top-k, so the F1 cannot move; the mean per-image average
    precision (the ranking the pairwise losses optimise) is used instead.
    """
    if val_targets.shape[1] <= k:
        return mean_image_average_precision(val_targets, scores)
    return float(per_tag_at_k(val_targets, scores, k)["f1"])

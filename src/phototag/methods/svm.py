"""``svm``: one probabilistic linear SVM per tag (one-vs-rest), on cached backbone features.

Each tag t has a linear SVM f_t(x) = w_tᵀx̂ + b_t on standardised features x̂, trained on the L2-regularised squared
hinge loss (liblinear's default primal, as ``sklearn.svm.LinearSVC``), all tags at once by full-batch L-BFGS.
Platt scaling then maps each SVM's margin to a probability, P(t | x) = sigmoid(A_t f_t(x) + B_t), fitted on the
validation images (the training margins are optimistic) with Platt's smoothed targets. The per-tag probabilities
are comparable across tags, so each image's top-k is meaningful.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._ranking import check_features
from ._training import feature_stats
from .base import TaggingMethod, register_method


@dataclass
class SVMConfig:
    C: float = 0.01  # inverse regularisation strength (sklearn's C): loss = ½‖w‖² + C Σ squared hinge
    max_iter: int = 200  # L-BFGS iterations for the SVMs (full batch, all tags together)
    platt_iter: int = 100  # L-BFGS iterations for the Platt sigmoids
    seed: int = 0  # seeds the initialisation (the problem is convex: only the last digits depend on it)


def fit_linear_svms(x: torch.Tensor, y: torch.Tensor, C: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest linear SVMs (squared hinge, L2 on w only), all columns at once.

    Args:
        x: ``(n, d)`` features. y: ``(n, n_tags)`` 0/1.

    Returns:
        ``(w (d, n_tags), b (n_tags,))``.
    """
    signs = 2.0 * y - 1.0
    w = torch.zeros(x.shape[1], y.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        margins = torch.relu(1.0 - signs * (x @ w + b))
        loss = 0.5 * (w**2).sum() + C * (margins**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


def fit_platt(margins: torch.Tensor, y: torch.Tensor, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Platt's sigmoid per column: ``(A, B)`` ``(n_tags,)`` minimising the cross-entropy of sigmoid(A·f + B) against
    Platt's smoothed targets ((N₊+1)/(N₊+2) for positives, 1/(N₋+2) for negatives)."""
    n_pos = y.sum(dim=0)
    n_neg = len(y) - n_pos
    soft = torch.where(y > 0, (n_pos + 1) / (n_pos + 2), 1.0 / (n_neg + 2))
    a = torch.ones(y.shape[1], dtype=margins.dtype, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=margins.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([a, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(margins * a + b, soft, reduction="sum")
        loss.backward()
        return loss

    optimizer.step(closure)
    return a.detach(), b.detach()


@register_method("svm")
class SVMTagger(TaggingMethod):
    """One linear SVM per tag with Platt scaling; scores are per-tag probabilities."""

    description = "one probabilistic linear SVM per tag: squared hinge + L2 (L-BFGS), Platt-scaled on validation data"
    Config = SVMConfig
    data_keys = ("features",)

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        n = self.check_inputs(inputs)
        y = self.check_targets(targets, n)
        cfg = self.config
        if cfg.C <= 0:
            raise ValueError(f"The 'C' parameter of svm must be > 0. Got {cfg.C} instead.")
        torch.manual_seed(cfg.seed)
        x = np.asarray(inputs["features"], dtype=np.float32)
        mean, scale = feature_stats(x)
        self.mean_, self.scale_ = mean, scale
        w, b = fit_linear_svms(torch.from_numpy(self._standardise(x)), torch.from_numpy(y), cfg.C, cfg.max_iter)
        self.coef_, self.intercept_ = w.numpy(), b.numpy()
        self.n_features_ = x.shape[1]
        self.n_tags_ = y.shape[1]
        have_val = val_inputs is not None and val_targets is not None and len(val_targets) > 0
        if have_val:
            calib_x = check_features(val_inputs, self.n_features_, "svm")
            calib_y = (np.asarray(val_targets) > 0).astype(np.float32)
        else:
            calib_x, calib_y = x, y
        a, b = fit_platt(torch.from_numpy(self._margins(calib_x)), torch.from_numpy(calib_y), cfg.platt_iter)
        self.platt_a_, self.platt_b_ = a.numpy(), b.numpy()
        return self

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) / self.scale_

    def _margins(self, x: np.ndarray) -> np.ndarray:
        """SVM decision values ``(n, n_tags)``."""
        return self._standardise(x) @ self.coef_ + self.intercept_

    def decision_function(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Raw SVM margins ``(n_images, n_tags)`` (before Platt scaling)."""
        self.check_fitted()
        return self._margins(check_features(inputs, self.n_features_, "svm"))

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        margins = self._margins(check_features(inputs, self.n_features_, "svm"))
        z = np.clip(margins * self.platt_a_ + self.platt_b_, -50, 50)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def get_state(self):
        arrays = {
            "mean": self.mean_,
            "scale": self.scale_,
            "coef": self.coef_,
            "intercept": self.intercept_,
            "platt_a": self.platt_a_,
            "platt_b": self.platt_b_,
        }
        return arrays, {"n_tags": int(self.n_tags_), "n_features": int(self.n_features_)}

    def set_state(self, arrays, meta):
        self.n_tags_, self.n_features_ = int(meta["n_tags"]), int(meta["n_features"])
        self.mean_, self.scale_ = np.asarray(arrays["mean"]), np.asarray(arrays["scale"])
        self.coef_, self.intercept_ = np.asarray(arrays["coef"]), np.asarray(arrays["intercept"])
        self.platt_a_, self.platt_b_ = np.asarray(arrays["platt_a"]), np.asarray(arrays["platt_b"])

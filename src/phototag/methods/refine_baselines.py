"""Baselines of tag refinement: ``user_tags``, ``tag_cooccur``, ``tag_vote``, ``rpca``, ``random_guess``.

They are the comparison points of the ``refine`` method (issue 6, "Kill two birds with one stone"). All are fitted
on a noisy tag matrix (``targets`` = the users' tags in the vocabulary's columns) and score images as any method
does. Several read the noisy tags of the images *being scored* (input ``"user_tags"``, tag strings mapped to
columns with the ``tag_names`` given to :meth:`fit`).

Methods whose scores for the fitted images themselves differ from :meth:`score` on those images (transductive
``rpca``; ``tag_vote``, which must not count an image as its own neighbour) set ``refined_scores_``
``(n_fit_images, n_tags)`` in :meth:`fit`; :func:`phototag.refinement.training_scores` uses it. It is not saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._usertags import tag_index, user_tag_matrix
from .base import RefinesTrainingScores, TaggingMethod, register_method
from .knn import unit_rows


class _UserTagMethod(TaggingMethod):
    """Shared plumbing: the vocabulary index for the ``"user_tags"`` input, saved with the state."""

    def _set_vocabulary(self, tag_names: list[str]) -> None:
        self.tag_names_ = list(tag_names)
        self._index = tag_index(self.tag_names_)

    def _user_matrix(self, inputs: Mapping[str, Any]) -> np.ndarray:
        return user_tag_matrix(inputs["user_tags"], self._index, self.n_tags_)

    def _meta(self) -> dict[str, Any]:
        return {"n_tags": int(self.n_tags_), "tag_names": self.tag_names_}

    def _restore_meta(self, meta: Mapping[str, Any]) -> None:
        self.n_tags_ = int(meta["n_tags"])
        self._set_vocabulary(list(meta["tag_names"]))


# --- user_tags ------------------------------------------------------------------------------------------------------
@dataclass
class UserTagsConfig:
    pass  # no settings: the noisy tags are returned as they are


@register_method("user_tags")
class UserTagsBaseline(_UserTagMethod):
    """Scores = the image's own (noisy) user tags, 1 or 0: what refinement has to beat."""

    description = "baseline: the image's own noisy user tags as 0/1 scores (no learning)"
    Config = UserTagsConfig
    data_keys = ("user_tags",)

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        n = self.check_inputs(inputs)
        targets = self.check_targets(targets, n)
        self._set_vocabulary(self.check_tag_names(tag_names, targets.shape[1]))
        self.n_tags_ = targets.shape[1]
        return self

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        return self._user_matrix(inputs)

    def get_state(self):
        return {}, self._meta()

    def set_state(self, arrays, meta):
        self._restore_meta(meta)


# --- tag_cooccur ----------------------------------------------------------------------------------------------------
@dataclass
class TagCooccurConfig:
    smoothing: float = 1.0  # added to each tag's count in P(c|u) = N(c,u) / (N(u) + smoothing); damps rare tags


@register_method("tag_cooccur")
class TagCooccurBaseline(_UserTagMethod):
    """Score of tag c = mean over the image's user tags u of P(c | u), estimated from the fitted tag matrix.

    P(u | u) = 1, so a user tag scores at least 1/|U| and more when the other user tags co-occur with it
    (Sigurbjörnsson & van Zwol 2008 style co-occurrence recommendation). Images without known user tags get the
    tag priors.
    """

    description = "baseline: tag co-occurrence, score(c) = mean over the user's tags u of P(c | u)"
    Config = TagCooccurConfig
    data_keys = ("user_tags",)

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        n = self.check_inputs(inputs)
        g = self.check_targets(targets, n)
        self._set_vocabulary(self.check_tag_names(tag_names, g.shape[1]))
        if self.config.smoothing < 0:
            raise ValueError(f"tag_cooccur smoothing must be >= 0. Got {self.config.smoothing} instead.")
        counts = g.T @ g  # (C, C): N(u, c)
        per_tag = np.diag(counts).copy()
        conditional = counts / (per_tag[:, None] + self.config.smoothing)  # row u: P(c | u)
        np.fill_diagonal(conditional, 1.0)
        self.conditional_ = conditional.astype(np.float32)
        self.prior_ = (per_tag / max(n, 1)).astype(np.float32)
        self.n_tags_ = g.shape[1]
        return self

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        g = self._user_matrix(inputs)
        n_user = g.sum(axis=1, keepdims=True)
        scores = (g @ self.conditional_) / np.maximum(n_user, 1.0)
        scores[n_user[:, 0] == 0] = self.prior_
        return scores

    def get_state(self):
        return {"conditional": self.conditional_, "prior": self.prior_}, self._meta()

    def set_state(self, arrays, meta):
        self._restore_meta(meta)
        self.conditional_ = np.asarray(arrays["conditional"], dtype=np.float32)
        self.prior_ = np.asarray(arrays["prior"], dtype=np.float32)


# --- tag_vote -------------------------------------------------------------------------------------------------------
@dataclass
class TagVoteConfig:
    k: int = 50  # visual neighbours that vote (cosine similarity of features)
    self_vote: bool = True  # the image's own user tags count as one more vote
    chunk_size: int = 1024  # query images handled at once (bounds memory: chunk × n_fit similarities)


@register_method("tag_vote")
class TagVoteBaseline(RefinesTrainingScores, _UserTagMethod):
    """Neighbour voting (Li, Snoek & Worring 2009): relevance(t) = votes for t among k visual neighbours − k·prior(t).

    Scores are ``(votes + own tag) / (k + 1) − prior``: how much more often the neighbourhood has the tag than
    chance. When refining the fitted images, an image is never its own neighbour.
    """

    description = "baseline: neighbour voting, tag votes of the k nearest images minus the tag prior"
    Config = TagVoteConfig
    data_keys = ("features", "user_tags")

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        n = self.check_inputs(inputs)
        g = self.check_targets(targets, n)
        self._set_vocabulary(self.check_tag_names(tag_names, g.shape[1]))
        if self.config.k < 1:
            raise ValueError(f"The 'k' parameter of tag_vote must be an int >= 1. Got {self.config.k} instead.")
        self.features_ = unit_rows(np.asarray(inputs["features"], dtype=np.float32))
        self.tags_ = g.astype(np.uint8)
        self.prior_ = g.mean(axis=0).astype(np.float32)
        self.n_tags_ = g.shape[1]
        self.refined_scores_ = self._votes(self.features_, g, exclude_self=True)
        return self

    def _votes(self, queries: np.ndarray, own: np.ndarray, *, exclude_self: bool = False) -> np.ndarray:
        bank, labels = self.features_, self.tags_.astype(np.float32)
        k = min(self.config.k, len(bank) - 1 if exclude_self else len(bank))
        out = np.empty((len(queries), self.n_tags_), dtype=np.float32)
        for start in range(0, len(queries), self.config.chunk_size):
            sims = queries[start : start + self.config.chunk_size] @ bank.T
            if exclude_self:
                sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
            if k > 0:
                idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
                votes = labels[idx].sum(axis=1)
            else:
                votes = np.zeros((len(sims), self.n_tags_), dtype=np.float32)
            out[start : start + len(sims)] = votes
        own_weight = 1.0 if self.config.self_vote else 0.0
        return (out + own_weight * own) / (k + own_weight) - self.prior_

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        queries = unit_rows(np.asarray(inputs["features"], dtype=np.float32))
        if queries.shape[1] != self.features_.shape[1]:
            raise ValueError(
                f"tag_vote expects features of shape (n, {self.features_.shape[1]}). Got {queries.shape} instead."
            )
        return self._votes(queries, self._user_matrix(inputs))

    def get_state(self):
        return {"features": self.features_, "tags": self.tags_, "prior": self.prior_}, self._meta()

    def set_state(self, arrays, meta):
        self._restore_meta(meta)
        self.features_ = np.asarray(arrays["features"], dtype=np.float32)
        self.tags_ = np.asarray(arrays["tags"], dtype=np.uint8)
        self.prior_ = np.asarray(arrays["prior"], dtype=np.float32)


# --- rpca -----------------------------------------------------------------------------------------------------------
@dataclass
class RPCAConfig:
    # Weight of the sparse term ‖S‖₁. None = Candès et al.'s 1 / sqrt(max(n_images, n_tags)), which on a sparse 0/1
    # tag matrix moves every tag into S (L = 0); 0.5 keeps L between 0 and G (measured on Corel5k, docs/refine.md).
    lam: float | None = 0.5
    max_iter: int = 100  # inexact ALM iterations at most
    tol: float = 1e-6  # stop when ‖G − L − S‖_F / ‖G‖_F < tol
    rho: float = 1.5  # growth of the penalty μ per iteration


@register_method("rpca")
class RPCABaseline(RefinesTrainingScores, _UserTagMethod):
    """Robust PCA of the tag matrix: G = L + S with L low-rank (the refined tags) and S sparse (the users' errors).

    Solved by the inexact augmented Lagrange multiplier method (Lin, Chen & Ma 2010). Transductive: scoring new
    images decomposes the fitted tag matrix stacked with theirs and returns their rows of L.
    """

    description = "baseline: robust PCA (low-rank + sparse) of the user-tag matrix, inexact ALM; scores = low-rank part"
    Config = RPCAConfig
    data_keys = ("user_tags",)

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        n = self.check_inputs(inputs)
        g = self.check_targets(targets, n)
        self._set_vocabulary(self.check_tag_names(tag_names, g.shape[1]))
        self.tags_ = g.astype(np.uint8)
        self.n_tags_ = g.shape[1]
        self.refined_scores_, _ = rpca_inexact_alm(g, **self._solver_settings())
        return self

    def _solver_settings(self) -> dict[str, Any]:
        cfg = self.config
        return {"lam": cfg.lam, "max_iter": cfg.max_iter, "tol": cfg.tol, "rho": cfg.rho}

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        query = self._user_matrix(inputs)
        low_rank, _ = rpca_inexact_alm(np.vstack([self.tags_.astype(np.float32), query]), **self._solver_settings())
        return low_rank[len(self.tags_) :]

    def get_state(self):
        return {"tags": self.tags_}, self._meta()

    def set_state(self, arrays, meta):
        self._restore_meta(meta)
        self.tags_ = np.asarray(arrays["tags"], dtype=np.uint8)


def rpca_inexact_alm(
    matrix: np.ndarray, *, lam: float | None = None, max_iter: int = 100, tol: float = 1e-6, rho: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Robust PCA ``min ‖L‖_* + λ‖S‖₁ s.t. D = L + S`` by inexact ALM (Lin, Chen & Ma 2010, Algorithm 5).

    Args:
        matrix: ``D`` ``(m, n)``.
        lam: ``λ``; ``None`` = ``1 / sqrt(max(m, n))``.
        max_iter: Iterations at most.
        tol: Relative residual ``‖D − L − S‖_F / ‖D‖_F`` to stop at.
        rho: Growth factor of the penalty ``μ``.

    Returns:
        ``(L, S)``, both ``(m, n)`` float32.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> low = rng.normal(size=(60, 2)) @ rng.normal(size=(2, 40))
        >>> sparse = np.where(rng.random((60, 40)) < 0.05, 10.0, 0.0)
        >>> L, S = rpca_inexact_alm(low + sparse)
        >>> bool(np.abs(L - low).max() < 1e-2)
        True
    """
    d = np.asarray(matrix, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"rpca needs a 2-D matrix. Got shape {d.shape} instead.")
    m, n = d.shape
    if lam is None:
        lam = 1.0 / np.sqrt(max(m, n, 1))
    if lam <= 0 or max_iter < 1 or rho <= 1:
        raise ValueError(f"rpca needs lam > 0, max_iter >= 1 and rho > 1. Got {lam}, {max_iter}, {rho} instead.")
    low, sparse = np.zeros_like(d), np.zeros_like(d)
    d_norm = np.linalg.norm(d)
    if d_norm == 0:
        return low.astype(np.float32), sparse.astype(np.float32)
    norm_two = _thin_svd(d)[1][0]
    dual = d / max(norm_two, np.abs(d).max() / lam)
    mu = 1.25 / norm_two
    mu_max = mu * 1e7
    for _ in range(max_iter):
        step = d - low + dual / mu
        sparse = np.sign(step) * np.maximum(np.abs(step) - lam / mu, 0.0)
        u, s, vt = _thin_svd(d - sparse + dual / mu)
        keep = int((s > 1.0 / mu).sum())
        low = (u[:, :keep] * (s[:keep] - 1.0 / mu)) @ vt[:keep]
        residual = d - low - sparse
        dual += mu * residual
        mu = min(mu * rho, mu_max)
        if np.linalg.norm(residual) / d_norm < tol:
            break
    return low.astype(np.float32), sparse.astype(np.float32)


def _thin_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD, via the eigendecomposition of the small Gram matrix when the matrix is tall (much faster)."""
    m, n = x.shape
    if m < 4 * n:
        return np.linalg.svd(x, full_matrices=False)
    eigenvalues, v = np.linalg.eigh(x.T @ x)
    order = np.argsort(eigenvalues)[::-1]
    s = np.sqrt(np.maximum(eigenvalues[order], 0.0))
    v = v[:, order]
    u = (x @ v) / np.maximum(s, 1e-12)
    return u, s, v.T


# --- random_guess ---------------------------------------------------------------------------------------------------
@dataclass
class RandomGuessConfig:
    seed: int = 0  # seeds the uniform scores (the same inputs always get the same scores)


@register_method("random_guess")
class RandomGuessBaseline(TaggingMethod):
    """Uniform random scores in [0, 1): the floor every metric is compared with (mAP ≈ tag frequency)."""

    description = "baseline: uniform random scores (the chance level of every metric)"
    Config = RandomGuessConfig
    data_keys = ("features",)

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        n = self.check_inputs(inputs)
        self.n_tags_ = self.check_targets(targets, n).shape[1]
        return self

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        rng = np.random.default_rng(self.config.seed)
        return rng.random((len(inputs["features"]), self.n_tags_), dtype=np.float32)

    def get_state(self):
        return {}, {"n_tags": int(self.n_tags_)}

    def set_state(self, arrays, meta):
        self.n_tags_ = int(meta["n_tags"])

"""``knn``: cosine nearest-neighbour tag voting over the training images' features."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import TaggingMethod, register_method


@dataclass
class KNNConfig:
    k: int = 50  # neighbours that vote
    temperature: float = 0.02  # softmax temperature on cosine similarity; smaller = nearest neighbours dominate
    prior_power: float = 0.0  # tag-prior correction: scores × (mean prior / tag prior)^p, 0 = off; boosts rare tags
    chunk_size: int = 1024  # query images scored at once (bounds memory: chunk × n_train similarities)


@register_method("knn")
class KNNTagger(TaggingMethod):
    """Each training image votes for its tags with weight softmax(cos(query, image) / T) over the k nearest.

    Scores lie in [0, 1] (a weighted fraction of neighbours having the tag), so the seeds' threshold applies.
    """

    description = "cosine kNN tag voting over training-image features (k, temperature, optional tag-prior correction)"
    Config = KNNConfig
    data_keys = ("features",)
    supports_update = True

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        n = self.check_inputs(inputs)
        targets = self.check_targets(targets, n)
        if self.config.k < 1:
            raise ValueError(f"The 'k' parameter of knn must be an int >= 1. Got {self.config.k} instead.")
        if self.config.temperature <= 0:
            raise ValueError(f"knn temperature must be > 0. Got {self.config.temperature} instead.")
        # Stored in float16 (half the model size); scoring always computes from this same copy, so a saved and
        # reloaded model gives identical scores.
        self.train_features_ = unit_rows(np.asarray(inputs["features"], dtype=np.float32)).astype(np.float16)
        self.train_targets_ = targets.astype(np.uint8)
        prior = targets.mean(axis=0)
        self.tag_prior_ = prior.astype(np.float32)
        self.n_tags_ = targets.shape[1]
        return self

    def update(self, inputs, targets, *, progress=True, tag_names=None):
        """Append the new images to the memory; old images get 0 for tags added since (their tags are unknown)."""
        targets = self.check_update_targets(inputs, targets)
        features = unit_rows(np.asarray(inputs["features"], dtype=np.float32))
        if features.shape[1] != self.train_features_.shape[1]:
            raise ValueError(
                f"knn expects features of shape (n, {self.train_features_.shape[1]}). Got {features.shape} instead."
            )
        old = np.pad(self.train_targets_, ((0, 0), (0, targets.shape[1] - self.n_tags_)))
        self.train_features_ = np.concatenate([self.train_features_, features.astype(np.float16)])
        self.train_targets_ = np.concatenate([old, targets.astype(np.uint8)])
        self.tag_prior_ = self.train_targets_.mean(axis=0).astype(np.float32)
        self.n_tags_ = targets.shape[1]
        return self

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        from scipy import sparse

        queries = unit_rows(np.asarray(inputs["features"], dtype=np.float32))
        bank = self.train_features_.astype(np.float32)
        # Sparse tags and a sparse (queries x bank) weight matrix: memory grows with k, not with k x n_tags.
        labels = sparse.csr_matrix(self.train_targets_, dtype=np.float32)
        k = min(self.config.k, len(bank))
        out = np.empty((len(queries), self.n_tags_), dtype=np.float32)
        for start in range(0, len(queries), self.config.chunk_size):
            sims = queries[start : start + self.config.chunk_size] @ bank.T
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(sims, idx, axis=1) / self.config.temperature
            weights = np.exp(top - top.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            rows = np.repeat(np.arange(len(sims)), k)
            vote = sparse.csr_matrix((weights.ravel(), (rows, idx.ravel())), shape=(len(sims), len(bank)))
            out[start : start + len(sims)] = (vote @ labels).toarray()
        if self.config.prior_power:
            prior = np.maximum(self.tag_prior_, 1.0 / len(bank))
            out = np.clip(out * (prior.mean() / prior) ** self.config.prior_power, 0.0, 1.0)
        return out

    def get_state(self):
        return (
            {
                "train_features": self.train_features_,
                "train_targets": self.train_targets_,
                "tag_prior": self.tag_prior_,
            },
            {"n_tags": int(self.n_tags_)},
        )

    def set_state(self, arrays, meta):
        self.train_features_ = np.asarray(arrays["train_features"], dtype=np.float16)
        self.train_targets_ = np.asarray(arrays["train_targets"], dtype=np.uint8)
        self.tag_prior_ = np.asarray(arrays["tag_prior"], dtype=np.float32)
        self.n_tags_ = int(meta["n_tags"])


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Each row of ``(n, d)`` features scaled to unit length (zero rows stay zero)."""
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D array (n_images, d). Got shape {features.shape} instead.")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)

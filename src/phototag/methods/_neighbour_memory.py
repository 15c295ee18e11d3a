"""The memory of training images that ``2pknn`` and ``tagprop`` vote from: scaled features, sparse tags, online
growth, compact state. numpy/scipy/faiss only (no PyTorch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import sparse

from ..neighbors import ExactIndex, FeatureScaler
from .base import TaggingMethod


class NeighbourMemory:
    """Training images as unit vectors (float16, so a saved and a freshly fitted model score identically) and
    their tags as a CSR matrix, with an exact faiss index over all of them built on first use.

    Args:
        features: ``(n, d)`` raw features of the training images.
        targets: ``(n, n_tags)`` 0/1 tags.
        blocks: Feature block sizes (``None`` = one block).
        standardize: Standardise each dimension before normalising.
    """

    def __init__(self, scaler: FeatureScaler, bank: np.ndarray, labels: sparse.csr_matrix):
        self.scaler = scaler
        self.bank = np.asarray(bank, np.float16)
        self.labels = sparse.csr_matrix(labels, dtype=np.float32)
        self._index: ExactIndex | None = None
        self._members: list[np.ndarray] | None = None

    @classmethod
    def fit(
        cls, features: np.ndarray, targets: np.ndarray, blocks: Sequence[int] | None = None, *, standardize: bool = True
    ) -> NeighbourMemory:
        scaler = FeatureScaler.fit(features, blocks, standardize=standardize)
        return cls(scaler, scaler.transform(features), sparse.csr_matrix((np.asarray(targets) > 0).astype(np.float32)))

    @property
    def n_tags(self) -> int:
        return int(self.labels.shape[1])

    def vectors(self) -> np.ndarray:
        """The bank as float32 (what every search and distance uses)."""
        return self.bank.astype(np.float32)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Query vectors, rounded through float16 like the bank so training queries equal their bank rows."""
        return self.scaler.transform(features).astype(np.float16).astype(np.float32)

    def index(self) -> ExactIndex:
        if self._index is None:
            self._index = ExactIndex(self.bank.shape[1])
            self._index.add(self.vectors())
        return self._index

    def members_by_tag(self) -> list[np.ndarray]:
        """Per tag, the bank rows carrying it (2PKNN's semantic groups)."""
        if self._members is None:
            by_tag = self.labels.tocsc()
            self._members = [
                np.sort(by_tag.indices[by_tag.indptr[t] : by_tag.indptr[t + 1]]).astype(np.int64)
                for t in range(self.n_tags)
            ]
        return self._members

    def append(self, features: np.ndarray, targets: np.ndarray) -> None:
        """Add new images; ``targets`` may have more columns than before (new tags, 0 for the old images)."""
        targets = (np.asarray(targets) > 0).astype(np.float32)
        if targets.shape[1] < self.n_tags:
            raise ValueError(f"update targets must have at least the model's {self.n_tags} tag columns.")
        vectors = self.scaler.transform(features).astype(np.float16)
        old = self.labels
        old.resize((old.shape[0], targets.shape[1]))
        self.labels = sparse.vstack([old, sparse.csr_matrix(targets)], format="csr")
        self.bank = np.concatenate([self.bank, vectors])
        self._index = None
        self._members = None

    def get_state(self) -> dict[str, np.ndarray]:
        return {
            "bank": self.bank,
            "feature_mean": self.scaler.mean,
            "feature_scale": self.scaler.scale,
            "feature_blocks": np.asarray(self.scaler.blocks, np.int64),
            "label_indptr": self.labels.indptr.astype(np.int64),
            "label_indices": self.labels.indices.astype(np.int32),
            "label_shape": np.asarray(self.labels.shape, np.int64),
        }

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray]) -> NeighbourMemory:
        scaler = FeatureScaler(
            np.asarray(arrays["feature_mean"], np.float32),
            np.asarray(arrays["feature_scale"], np.float32),
            tuple(int(b) for b in arrays["feature_blocks"]),
        )
        indices = np.asarray(arrays["label_indices"], np.int32)
        labels = sparse.csr_matrix(
            (np.ones(len(indices), np.float32), indices, np.asarray(arrays["label_indptr"], np.int64)),
            shape=tuple(int(s) for s in arrays["label_shape"]),
        )
        return cls(scaler, arrays["bank"], labels)


def append_update(
    method: TaggingMethod, inputs: Mapping[str, np.ndarray], targets: np.ndarray, features: np.ndarray
) -> int:
    """The online update shared by the neighbour-voting methods: check the new images and their targets (old tag
    columns first, then any new ones), add them (``features``: what the method reads from ``inputs``) to
    ``method.memory_`` and return how many tags are new."""
    targets = method.check_update_targets(inputs, targets)
    method.memory_.append(features, targets)
    added = targets.shape[1] - method.n_tags_
    method.n_tags_ = targets.shape[1]
    return added

"""Exact nearest-neighbour search for the neighbour-voting methods (``2pknn``, ``tagprop``; ``knn`` can adopt it).

Features are standardised per dimension (mean and standard deviation of the training features), split into
*blocks* (e.g. the parts of concatenated backbones), each block L2-normalised, and the blocks concatenated and
scaled by ``1/sqrt(n_blocks)``: every vector has unit norm and the inner product of two vectors is the mean of
their per-block cosine similarities. Search is exact inner-product search in a faiss ``IndexFlatIP`` (faiss-cpu,
numpy only: no PyTorch), which ranks by the distance ``1 - mean cosine`` that the methods weight.

Example:
    >>> import numpy as np
    >>> bank = np.eye(3, dtype=np.float32)
    >>> index = ExactIndex(3)
    >>> index.add(bank)
    >>> sims, ids = index.search(np.array([[0.9, 0.1, 0.0]], dtype=np.float32), 2)
    >>> ids.tolist()
    [[0, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
        raise ImportError("Nearest-neighbour search needs faiss: pip install faiss-cpu") from exc
    return faiss


class ExactIndex:
    """Exact inner-product search over unit vectors (a faiss ``IndexFlatIP``); ids are insertion order.

    Args:
        dim: Vector dimension.
    """

    def __init__(self, dim: int):
        self.dim = int(dim)
        self._index = _faiss().IndexFlatIP(self.dim)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        """Append ``(n, dim)`` vectors; they get ids ``len(self)`` ... ``len(self) + n - 1``."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"Index vectors must have shape (n, {self.dim}). Got {vectors.shape} instead.")
        if len(vectors):
            self._index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` (at most ``len(self)``) most similar vectors of each query, best first.

        Returns:
            ``(similarities, ids)``, both ``(n_queries, min(k, len(self)))``.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), len(self))
        if k <= 0 or len(queries) == 0:
            return np.zeros((len(queries), max(k, 0)), np.float32), np.zeros((len(queries), max(k, 0)), np.int64)
        sims, ids = self._index.search(queries, k)
        return sims, ids


@dataclass
class FeatureScaler:
    """Standardise, L2-normalise per block and concatenate (see the module docstring).

    Attributes:
        mean: ``(d,)`` per-dimension mean of the training features.
        scale: ``(d,)`` per-dimension standard deviation (1 where it is 0), or all ones when not standardising.
        blocks: Sizes of the feature blocks, summing to ``d``.
    """

    mean: np.ndarray
    scale: np.ndarray
    blocks: tuple[int, ...]

    @classmethod
    def fit(cls, features: np.ndarray, blocks: Sequence[int] | None = None, *, standardize: bool = True):
        """Learn the per-dimension statistics of ``features`` ``(n, d)``; ``blocks`` default to one block."""
        features = _check_2d(features)
        d = features.shape[1]
        blocks = tuple(int(b) for b in blocks) if blocks else (d,)
        if sum(blocks) != d or min(blocks) < 1:
            raise ValueError(f"Feature blocks {list(blocks)} must be positive and sum to the feature size {d}.")
        if standardize:
            mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
            scale = features.std(axis=0, dtype=np.float64).astype(np.float32)
            scale[scale <= 1e-12] = 1.0
        else:
            mean, scale = np.zeros(d, np.float32), np.ones(d, np.float32)
        return cls(mean, scale, blocks)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Unit vectors ``(n, d)`` float32 whose inner products are mean per-block cosine similarities."""
        features = _check_2d(features)
        if features.shape[1] != self.dim:
            raise ValueError(f"Expected features of shape (n, {self.dim}). Got {features.shape} instead.")
        out = (features - self.mean) / self.scale
        for start, stop in self.block_slices():
            part = out[:, start:stop]
            part /= np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
        out /= np.sqrt(len(self.blocks))
        return out.astype(np.float32)

    def block_slices(self) -> list[tuple[int, int]]:
        bounds = np.concatenate([[0], np.cumsum(self.blocks)])
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def block_distances(
    queries: np.ndarray, bank: np.ndarray, query_rows: np.ndarray, bank_rows: np.ndarray, blocks: Sequence[int]
) -> np.ndarray:
    """Per-block cosine distances ``(n_pairs, n_blocks)`` between ``queries[query_rows]`` and ``bank[bank_rows]``.

    Both arrays come from :meth:`FeatureScaler.transform` (blocks scaled by ``1/sqrt(n_blocks)``), so a block's
    distance is ``1 - cosine`` in [0, 2]; their mean is ``1 - queries @ bank.T`` for the pair.
    """
    n_blocks = len(blocks)
    out = np.empty((len(query_rows), n_blocks), np.float32)
    bounds = np.concatenate([[0], np.cumsum(blocks)])
    for start in range(0, len(query_rows), 65536):
        q = queries[query_rows[start : start + 65536]]
        b = bank[bank_rows[start : start + 65536]]
        for j in range(n_blocks):
            sl = slice(int(bounds[j]), int(bounds[j + 1]))
            out[start : start + len(q), j] = 1.0 - n_blocks * np.einsum("ij,ij->i", q[:, sl], b[:, sl])
    return out


def _check_2d(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D array (n_images, d). Got shape {features.shape} instead.")
    return features

"""Weighted neighbour voting shared by ``2pknn`` and ``tagprop``: ragged neighbourhoods, votes, and the
leave-one-out log-likelihood (with its gradient) whose maximisation learns the voting weights.

A :class:`Neighbourhoods` holds, for each query image, a list of training ("bank") images with their per-block
distances (and, for fixed-size lists, their rank). Each query's weights ``pi`` over its list sum to 1:
``softmax(-dist @ w)`` (distance-based: TagProp's and 2PKNN's ``exp(-w·d)``) or ``gamma[rank]`` with
``gamma = softmax(theta)`` (TagProp's rank-based weights). The vote for tag ``t`` is ``x_t = sum(pi * y_t)``.
TagProp's likelihood models ``p(t) = eps + (1 - 2 eps) x_t`` or, with per-tag sigmoids (σML),
``p(t) = sigmoid(alpha_t x_t + beta_t)``. numpy/scipy only (no PyTorch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse

from ..neighbors import ExactIndex, block_distances


@dataclass
class Neighbourhoods:
    """Ragged neighbour lists, entries sorted by query: entry ``e`` links query ``seg[e]`` to bank row ``rows[e]``.

    Attributes:
        n_queries: Number of query images (every query has at least one entry).
        seg: ``(E,)`` query of each entry, non-decreasing.
        rows: ``(E,)`` bank row of each entry.
        dist: ``(E, n_blocks)`` per-block distances ``1 - cosine``.
        rank: ``(E,)`` position in the query's list (0 = nearest), or ``None`` for lists of varying size.
    """

    n_queries: int
    seg: np.ndarray
    rows: np.ndarray
    dist: np.ndarray
    rank: np.ndarray | None = None

    @property
    def starts(self) -> np.ndarray:
        return np.searchsorted(self.seg, np.arange(self.n_queries))


def knn_neighbourhoods(
    index: ExactIndex,
    queries: np.ndarray,
    bank: np.ndarray,
    k: int,
    blocks: tuple[int, ...],
    *,
    exclude: np.ndarray | None = None,
) -> Neighbourhoods:
    """The ``k`` nearest bank images of each query (TagProp); ``exclude[i]`` (a bank row) is left out of query
    ``i``'s list (leave-one-out on the training images)."""
    k = min(k, len(index) - (exclude is not None))
    sims, ids = index.search(queries, k + (exclude is not None))
    if exclude is not None:
        keep = _first_k_not(ids, exclude, k)
        sims, ids = sims[keep].reshape(len(ids), k), ids[keep].reshape(len(ids), k)
    seg = np.repeat(np.arange(len(queries)), k)
    rank = np.tile(np.arange(k, dtype=np.int32), len(queries))
    rows = ids.ravel()
    return Neighbourhoods(len(queries), seg, rows, _distances(queries, bank, seg, rows, sims, blocks), rank)


def tag_neighbourhoods(
    members_by_tag: list[np.ndarray],
    queries: np.ndarray,
    bank: np.ndarray,
    k1: int,
    blocks: tuple[int, ...],
    *,
    exclude: np.ndarray | None = None,
) -> Neighbourhoods:
    """2PKNN's first pass: for every tag, the ``k1`` nearest bank images carrying it; the union over tags (each
    image once) is the query's neighbourhood. ``members_by_tag[t]`` lists the bank rows carrying tag ``t``.

    Exact: one block of query-bank inner products (a BLAS matrix product, the computation a flat index does),
    from which each tag's ``k1`` best members are selected; ``exclude[i]`` is left out of query ``i``'s lists.
    """
    n_bank, n_q = len(bank), len(queries)
    sims = queries @ bank.T
    if exclude is not None:
        sims[np.arange(n_q), exclude] = -np.inf
    keys, sims_all = [], []
    for members in members_by_tag:
        if len(members) == 0:
            continue
        block = sims[:, members]
        if len(members) > k1:
            local = np.argpartition(-block, k1 - 1, axis=1)[:, :k1]
            block = np.take_along_axis(block, local, axis=1)
            rows = members[local]
        else:
            rows = np.broadcast_to(members, block.shape)
        keep = np.isfinite(block)
        q = np.nonzero(keep)[0]
        keys.append(q.astype(np.int64) * n_bank + rows[keep])
        sims_all.append(block[keep])
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    sim = np.concatenate(sims_all) if sims_all else np.zeros(0, np.float32)
    key, first = np.unique(key, return_index=True)
    seg, rows = key // n_bank, key % n_bank
    if len(np.unique(seg)) != n_q:
        raise ValueError("2pknn found no neighbours for some images: the other training images carry no tags.")
    return Neighbourhoods(n_q, seg, rows, _distances(queries, bank, seg, rows, sim[first], blocks))


def _first_k_not(ids: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Mask of the first ``k`` entries of each row of ``ids`` that differ from that row's ``exclude``."""
    other = ids != exclude[:, None]
    return other & (np.cumsum(other, axis=1) <= k)


def _distances(queries, bank, seg, rows, sims, blocks) -> np.ndarray:
    if len(blocks) == 1:
        return (1.0 - np.asarray(sims, np.float32)).reshape(-1, 1)
    return block_distances(queries, bank, seg, rows, blocks)


# --- votes -------------------------------------------------------------------------------------------------------
def label_pairs(nb: Neighbourhoods, labels: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """``(entry, tag)`` of every tag carried by every entry's bank image."""
    counts = np.diff(labels.indptr)[nb.rows]
    entries = np.repeat(np.arange(len(nb.rows)), counts)
    offsets = np.repeat(labels.indptr[nb.rows] - (np.cumsum(counts) - counts), counts)
    return entries, labels.indices[offsets + np.arange(len(entries))].astype(np.int64)


def vote(nb: Neighbourhoods, pi: np.ndarray, pairs: tuple[np.ndarray, np.ndarray], n_tags: int) -> np.ndarray:
    """Votes ``(n_queries, n_tags)``: the weighted share of each query's neighbours carrying each tag."""
    entries, tags = pairs
    flat = np.bincount(nb.seg[entries] * n_tags + tags, weights=pi[entries], minlength=nb.n_queries * n_tags)
    return flat.reshape(nb.n_queries, n_tags)


def distance_weights(nb: Neighbourhoods, w: np.ndarray) -> np.ndarray:
    """``softmax(-dist @ w)`` within each query's list."""
    s = -(nb.dist.astype(np.float64) @ np.asarray(w, np.float64))
    starts = nb.starts
    s -= np.repeat(np.maximum.reduceat(s, starts), np.diff(np.append(starts, len(s))))
    e = np.exp(s)
    return e / np.bincount(nb.seg, weights=e, minlength=nb.n_queries)[nb.seg]


def rank_weights(nb: Neighbourhoods, theta: np.ndarray) -> np.ndarray:
    """``softmax(theta)[rank]``: the weight of the k-th neighbour (all lists have ``len(theta)`` entries)."""
    return _softmax(theta)[nb.rank]


def _softmax(theta: np.ndarray) -> np.ndarray:
    e = np.exp(np.asarray(theta, np.float64) - np.max(theta))
    return e / e.sum()


# --- learning the weights ------------------------------------------------------------------------------------------
@dataclass
class VoteLikelihood:
    """TagProp's weighted log-likelihood of the training tags under leave-one-out neighbour votes.

    Args:
        nb: Neighbourhoods of the training images (leave-one-out).
        labels: ``(n_bank, n_tags)`` CSR 0/1 tags of the bank images.
        targets: ``(n_queries, n_tags)`` 0/1 tags of the query images.
        mode: ``"distance"`` (weights ``w`` per distance block) or ``"rank"`` (``theta`` per rank).
        eps: Probability floor of the plain model ``p = eps + (1 - 2 eps) x``.
        balance: Weight positives by ``1/n_pos`` and negatives by ``1/n_neg`` (TagProp's ``c_iw``) instead of all
            by ``1/(n_queries n_tags)``.
        sigmoid_l2: L2 penalty on the per-tag sigmoid parameters (their mean square), keeping rare tags finite.
    """

    nb: Neighbourhoods
    labels: sparse.csr_matrix
    targets: np.ndarray
    mode: str = "distance"
    eps: float = 1e-5
    balance: bool = True
    sigmoid_l2: float = 1e-4

    def __post_init__(self):
        self.pairs = label_pairs(self.nb, self.labels)
        self.flat = self.nb.seg[self.pairs[0]] * self.labels.shape[1] + self.pairs[1]
        y = np.asarray(self.targets, np.float64)
        n_pos = max(y.sum(), 1.0)
        n_neg = max(y.size - y.sum(), 1.0)
        self.y = y
        self.c = np.where(y > 0, 1.0 / n_pos, 1.0 / n_neg) if self.balance else np.full_like(y, 1.0 / y.size)
        self.n_tags = y.shape[1]

    def weights(self, params: np.ndarray) -> np.ndarray:
        return distance_weights(self.nb, params) if self.mode == "distance" else rank_weights(self.nb, params)

    def loss(
        self, weight_params: np.ndarray, alpha: np.ndarray | None = None, beta: np.ndarray | None = None
    ) -> tuple[float, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Negative log-likelihood and its gradients with respect to the weight parameters, alpha and beta."""
        pi = self.weights(weight_params)
        x = vote(self.nb, pi, self.pairs, self.n_tags)
        y, c = self.y, self.c
        if alpha is None:
            p = self.eps + (1 - 2 * self.eps) * x
            loglik = np.sum(c * (y * np.log(p) + (1 - y) * np.log1p(-p)))
            gx = c * (y / p - (1 - y) / (1 - p)) * (1 - 2 * self.eps)
            g_alpha = g_beta = None
        else:
            z = alpha * x + beta
            softplus = np.logaddexp(0, z)
            # y log p + (1 - y) log(1 - p) = y z - log(1 + e^z) for p = sigmoid(z)
            loglik = np.sum(c * (y * z - softplus))
            dz = c * (y - np.exp(z - softplus))
            gx = dz * alpha
            n = alpha.size
            loglik -= self.sigmoid_l2 * (np.sum((alpha - 1) ** 2) + np.sum(beta**2)) / n
            g_alpha = (dz * x).sum(axis=0) - 2 * self.sigmoid_l2 * (alpha - 1) / n
            g_beta = dz.sum(axis=0) - 2 * self.sigmoid_l2 * beta / n
        entries = self.pairs[0]
        g_pi = np.bincount(entries, weights=gx.ravel()[self.flat], minlength=len(pi))
        if self.mode == "distance":
            mean = np.bincount(self.nb.seg, weights=pi * g_pi, minlength=self.nb.n_queries)[self.nb.seg]
            g_s = pi * (g_pi - mean)
            g_w = -(g_s @ self.nb.dist.astype(np.float64))
        else:
            gamma = _softmax(weight_params)
            g_gamma = np.bincount(self.nb.rank, weights=g_pi, minlength=len(gamma))
            g_w = gamma * (g_gamma - gamma @ g_gamma)
        return -loglik, -g_w, None if g_alpha is None else -g_alpha, None if g_beta is None else -g_beta

    def fit(
        self,
        weight_params: np.ndarray,
        alpha: np.ndarray | None = None,
        beta: np.ndarray | None = None,
        *,
        fit_weights: bool = True,
        fit_sigmoids: bool = False,
        max_iter: int = 100,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Maximise the likelihood with L-BFGS-B (distance weights kept >= 0, TagProp's constraint) over the
        weight parameters and/or the per-tag sigmoids; returns the updated ``(weight_params, alpha, beta)``."""
        w0 = np.asarray(weight_params, np.float64)
        a0 = None if alpha is None else np.asarray(alpha, np.float64)
        b0 = None if beta is None else np.asarray(beta, np.float64)
        nw, nt = len(w0), self.n_tags

        def unpack(v):
            w = v[:nw] if fit_weights else w0
            rest = v[nw:] if fit_weights else v
            if fit_sigmoids:
                return w, rest[:nt], rest[nt:]
            return w, a0, b0

        def objective(v):
            w, a, b = unpack(v)
            f, gw, ga, gb = self.loss(w, a, b)
            grads = ([gw] if fit_weights else []) + ([ga, gb] if fit_sigmoids else [])
            return f, np.concatenate(grads)

        start = ([w0] if fit_weights else []) + ([a0, b0] if fit_sigmoids else [])
        lower = 0.0 if self.mode == "distance" else None
        bounds = ([(lower, None)] * nw if fit_weights else []) + ([(None, None)] * 2 * nt if fit_sigmoids else [])
        result = optimize.minimize(
            objective, np.concatenate(start), jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": max_iter}
        )
        return unpack(result.x)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))

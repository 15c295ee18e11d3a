"""Score calibrations fitted on held-out scores: decision thresholds (one global, or per tag), and per-tag
balancing offsets.

The global threshold maximises the mean per-image F1 of the seeds' rule on validation scores; per-tag thresholds
maximise each tag's F1.

The result goes into :attr:`phototag.model.DecisionRule.per_tag_threshold` (saved with the model); the seeds' rule
then keeps, per image, the tags scoring at least *their own* threshold (at most ``max_tags``). Top-k decisions are
unaffected. Tags without a positive validation image keep the global threshold: there is nothing to calibrate on.

Balancing offsets (:func:`tag_balance_offsets`) shift each tag's logit so that, on out-of-fold scores, the tag is
among an image's top k about as often as it truly occurs (to the power ``power``): frequent tags stop crowding out
rare ones in every image's top k, which the per-word metrics of the Corel5k protocol (mean per-word P/R, N+) reward.
"""

from __future__ import annotations

import numpy as np

from .metrics import per_image_prf, top_k_mask


def global_threshold(
    y_true: np.ndarray, scores: np.ndarray, *, max_tags: int | None = 15, candidates: np.ndarray | None = None
) -> float:
    """The one score threshold whose seeds' rule (score ≥ threshold, at most ``max_tags`` per image) gives the best
    mean per-image F1 on ``(y_true, scores)`` ``(n_images, n_tags)``; among equally good ones the highest.

    ``candidates`` default to 0.01, 0.02, ..., 0.99: scores may run lower than the seeds' 0.3 (``refine``'s vote,
    ``drel``'s one Platt scale) or higher (``tagprop``'s per-word sigmoids).

    Example:
        >>> y = np.array([[1, 0], [0, 1]])
        >>> s = np.array([[0.12, 0.05], [0.02, 0.08]])
        >>> global_threshold(y, s)  # 0.08 keeps exactly the two true tags
        0.08
    """
    truth = np.asarray(y_true) > 0
    scores = np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape or truth.ndim != 2:
        raise ValueError(f"y_true and scores must have the same 2-d shape. Got {truth.shape} and {scores.shape}.")
    grid = np.round(np.arange(1, 100) / 100, 2) if candidates is None else np.asarray(candidates, dtype=np.float64)
    cap = top_k_mask(scores, max_tags) if max_tags is not None and max_tags < scores.shape[1] else True
    f1 = [per_image_prf(truth, (scores >= t) & cap)["f1"].mean() for t in grid]
    best = np.flatnonzero(np.asarray(f1) == max(f1))[-1]
    return float(grid[best])


def per_tag_thresholds(y_true: np.ndarray, scores: np.ndarray, *, default: float = 0.3) -> np.ndarray:
    """For each tag, the score threshold that maximises F1 on ``(y_true, scores)`` ``(n_images, n_tags)``.

    Candidates are the tag's own validation scores (any threshold between two consecutive scores gives the same
    decisions); among equally good ones the highest is taken (fewest false positives). Tags with no positive image
    get ``default``.

    Returns:
        ``(n_tags,)`` float32 thresholds.

    Example:
        >>> y = np.array([[1], [1], [0], [0]])
        >>> s = np.array([[0.9], [0.4], [0.5], [0.1]])
        >>> per_tag_thresholds(y, s).tolist()  # 0.4 keeps both positives and one negative: F1 0.8 (0.9 gives 0.67)
        [0.4000000059604645]
    """
    truth = np.asarray(y_true) > 0
    scores = np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape or truth.ndim != 2:
        raise ValueError(f"y_true and scores must have the same 2-d shape. Got {truth.shape} and {scores.shape}.")
    out = np.full(truth.shape[1], default, dtype=np.float32)
    for j in range(truth.shape[1]):
        positives = int(truth[:, j].sum())
        if positives == 0:
            continue
        order = np.argsort(-scores[:, j], kind="stable")
        ranked, hits = scores[order, j], truth[order, j]
        tp = np.cumsum(hits)
        predicted = np.arange(1, len(ranked) + 1)
        f1 = 2 * tp / (predicted + positives)
        # A cut is only possible after the last of a run of equal scores.
        valid = np.r_[ranked[1:] < ranked[:-1], True]
        f1 = np.where(valid, f1, -1.0)
        best = np.flatnonzero(f1 == f1.max())[0]
        out[j] = ranked[best]
    return out


def logit(scores: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """``log(p / (1 - p))`` of scores clipped to ``[eps, 1 - eps]``."""
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


def apply_offsets(scores: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Scores ``(n_images, n_tags)`` in [0, 1] shifted by per-tag logit ``offsets``: ``sigmoid(logit(s) + b)``."""
    return (1.0 / (1.0 + np.exp(-(logit(scores) + np.asarray(offsets, dtype=np.float64))))).astype(np.float32)


def balanced_ranking(
    scores: np.ndarray, offsets: np.ndarray, *, exclude: np.ndarray | None = None, places: int | None = None
) -> np.ndarray:
    """The scores ``(n_images, n_tags)`` that choose a balanced top k: ``sigmoid(logit(s) + offset)`` per tag, except
    that each image's highest-scoring tag ranks first whatever its offset (among the tags not in ``exclude``, a
    ``(n_tags,)`` bool mask). So a balanced top k never drops the photo's most likely tag, and fills the other places
    with the tags the offsets favour (on Corel5k folds this kept the first tag's precision, 0.80 against 0.82 for
    the plain ranking shown in score order, where ranking every tag by its offset gave 0.70).

    ``places``: the offsets choose only the first ``places`` places; the places after them go by score (a top k of
    at most ``places`` is the same as without it).

    Example:
        >>> s = np.array([[0.9, 0.5, 0.2, 0.4]])
        >>> off = np.array([-9.0, 0.0, 4.0, 0.0])
        >>> top_k_mask(balanced_ranking(s, off), 2).astype(int).tolist()
        [[1, 0, 1, 0]]
        >>> top_k_mask(balanced_ranking(s, off, places=2), 3).astype(int).tolist()  # the third place by score
        [[1, 1, 1, 0]]
    """
    scores = np.asarray(scores)
    ranking = apply_offsets(scores, offsets)
    if scores.size:
        candidates = scores if exclude is None else np.where(np.asarray(exclude, dtype=bool), -np.inf, scores)
        ranking[np.arange(len(scores)), np.argmax(candidates, axis=1)] = 2.0  # above every sigmoid
    if places is not None and scores.size and places < scores.shape[1]:
        eligible = ranking if exclude is None else np.where(np.asarray(exclude, dtype=bool), -np.inf, ranking)
        chosen = top_k_mask(eligible, places)
        ranking = np.where(chosen, 3.0 + ranking, scores)  # the balanced places first, in their order; then by score
    return ranking


def check_balance_settings(balance: float, balance_k: int, strength: float, *, method: str = "") -> None:
    """Refuse balancing settings before any training: ``balance`` (the power) and ``strength`` must be >= 0,
    ``balance_k`` >= 1 (the settings of every method that fits :func:`tag_balance_offsets`)."""
    if balance < 0 or balance_k < 1 or strength < 0:
        raise ValueError(
            f"{method + ' ' if method else ''}balance and balance_strength must be >= 0 and balance_k >= 1. "
            f"Got {balance}, {strength} and {balance_k} instead."
        )


def offsets_with_new_tags(offsets: np.ndarray | None, added: int) -> np.ndarray | None:
    """``offsets`` grown by ``added`` tags learnt online, each given the median offset (``None`` stays ``None``)."""
    if offsets is None or not added:
        return offsets
    return np.concatenate([offsets, np.full(added, np.median(offsets), dtype=np.float32)])


def tag_balance_offsets(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    k: int = 5,
    power: float = 1.0,
    strength: float = 1.0,
    steps: int = 300,
    rate: float = 0.5,
) -> np.ndarray:
    """Per-tag logit offsets that make each tag's top-``k`` count match its true count (to the ``power``), scaled by
    ``strength``.

    The target count of tag t is ``n_t ** power`` rescaled so all targets sum to ``k × n_images`` (every top-k slot
    is used); ``power`` 1 predicts each tag in proportion to how often it occurs, lower powers favour rare tags
    more. The offsets are found by updates ``b_t += rate_i × (log(target_t + 1) - log(count_t + 1))`` with a
    decaying step ``rate_i``, keeping the iterate with the smallest total count error.
    Fit them on scores of images the model did not train on (out-of-fold), or frequent tags look easier than they
    are. ``strength`` multiplies the fitted offsets: above 1 it holds frequent tags back further than the counts ask
    (the shipped default model uses 1.5 with ``k`` 1 and ``power`` 0.75, chosen on Corel5k folds by per-word F1@5,
    docs/default_model.md).

    Returns:
        ``(n_tags,)`` float32 offsets (tags with no positive image have target 0 and are pushed down).

    Example:
        >>> y = np.array([[1, 0], [1, 0], [0, 1], [1, 0]])
        >>> s = np.array([[0.9, 0.5], [0.8, 0.4], [0.7, 0.6], [0.9, 0.1]])
        >>> b = tag_balance_offsets(y, s, k=1)
        >>> top_k_mask(apply_offsets(s, b), 1).sum(axis=0).tolist()  # tag 1 now tops one image, as it occurs once
        [3, 1]
    """
    truth = np.asarray(y_true) > 0
    scores = np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape or truth.ndim != 2:
        raise ValueError(f"y_true and scores must have the same 2-d shape. Got {truth.shape} and {scores.shape}.")
    if not 1 <= k <= truth.shape[1]:
        raise ValueError(f"k must be between 1 and the number of tags ({truth.shape[1]}). Got {k} instead.")
    if power < 0:
        raise ValueError(f"power must be >= 0. Got {power} instead.")
    if strength < 0:
        raise ValueError(f"strength must be >= 0. Got {strength} instead.")
    counts = truth.sum(axis=0).astype(np.float64)
    target = np.where(counts > 0, counts, 0.0) ** power * (counts > 0)
    target *= k * len(truth) / max(target.sum(), 1e-12)
    base = logit(scores)
    offsets = np.zeros(truth.shape[1])
    best, best_error = offsets.copy(), np.inf
    for step in range(steps):
        predicted = top_k_mask(base + offsets, k).sum(axis=0)
        error = np.abs(predicted - target).sum()
        if error < best_error:
            best, best_error = offsets.copy(), error
        # A decaying step: counts move in jumps, and a fixed step can oscillate around the target.
        offsets += rate / (1.0 + step / 30.0) * (np.log(target + 1.0) - np.log(predicted + 1.0))
    return (strength * best).astype(np.float32)

"""Per-tag decision thresholds calibrated on validation scores to maximise each tag's F1.

The result goes into :attr:`phototag.model.DecisionRule.per_tag_threshold` (saved with the model); the seeds' rule
then keeps, per image, the tags scoring at least *their own* threshold (at most ``max_tags``). Top-k decisions are
unaffected. Tags without a positive validation image keep the global threshold: there is nothing to calibrate on.
"""

from __future__ import annotations

import numpy as np


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

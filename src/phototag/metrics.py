"""Tagging metrics from the seed papers, as pure functions on arrays.

Inputs are ``y_true`` ``(n_images, n_tags)`` 0/1 and ``scores`` ``(n_images, n_tags)`` (higher = more relevant) or
binary decisions ``y_pred`` of the same shape.

- Per image (seed 001): precision, recall and F1 of each image's predicted tag set, summarised by mean, median and
  standard deviation (:func:`per_image_prf`).
- Per tag at top-k (seed 002, the Corel5k protocol of Makadia et al. 2008): every image gets its k best tags; per-tag
  precision and recall are averaged over the tags present in the ground truth; F1 of the two means; N+ = tags with
  recall > 0 (:func:`per_tag_at_k`).
- Ranking (seed 004): mAP (per-tag average precision, averaged over tags), miAP (per-image AP, averaged over
  images), micro- and macro-averaged ROC AUC (:func:`mean_average_precision`, :func:`mean_image_average_precision`,
  :func:`micro_auc`, :func:`macro_auc`). Average precision and AUC handle tied scores as scikit-learn does.

Example:
    >>> y = np.array([[1, 0, 1], [0, 1, 0]])
    >>> s = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3]])
    >>> round(mean_average_precision(y, s), 4)
    1.0
    >>> per_tag_at_k(y, s, k=1)["n_plus"]
    2
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _check(y_true: np.ndarray, other: np.ndarray, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    other = np.asarray(other, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != other.shape:
        raise ValueError(
            f"y_true and {what} must be 2-D arrays of the same shape (n_images, n_tags). "
            f"Got {y_true.shape} and {other.shape} instead."
        )
    if not np.isfinite(other).all():
        raise ValueError(f"{what} contain NaN or infinite values.")
    return (y_true > 0), other


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": float("nan"), "median": float("nan"), "std": float("nan")}
    return {"mean": float(values.mean()), "median": float(np.median(values)), "std": float(values.std())}


# --- decisions ------------------------------------------------------------------------------------------------------
def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of each row's ``k`` highest scores (ties broken by column order)."""
    scores = np.asarray(scores)
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"The 'k' parameter must be an int >= 1. Got {k!r} instead.")
    if k >= scores.shape[1]:
        return np.ones(scores.shape, dtype=bool)
    # The k-th largest score of each row (a partition, not a sort: this runs in every balancing step), then the
    # ties at it taken in column order, as a stable sort would.
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    if np.isnan(kth).any():  # fewer than k numbers in a row: the sort's order, NaNs last
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        mask = np.zeros(scores.shape, dtype=bool)
        np.put_along_axis(mask, order, True, axis=1)
        return mask
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(axis=1, keepdims=True)
    return above | (tied & (np.cumsum(tied, axis=1) <= need))


def threshold_mask(scores: np.ndarray, threshold: float | np.ndarray = 0.3, max_tags: int | None = 15) -> np.ndarray:
    """Boolean mask of the seeds' rule: scores ≥ ``threshold`` (global or per tag), at most ``max_tags`` per image."""
    scores = np.asarray(scores)
    mask = scores >= np.asarray(threshold)
    if max_tags is not None and max_tags < scores.shape[1]:
        mask &= top_k_mask(scores, max_tags)
    return mask


# --- per image ------------------------------------------------------------------------------------------------------
def per_image_prf(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of each image's predicted tag set (0 where undefined, as scikit-learn's
    ``zero_division=0``).

    Returns:
        ``{"precision", "recall", "f1"}``, each ``(n_images,)``.
    """
    truth, pred = _check(y_true, y_pred, "y_pred")
    pred = pred > 0
    tp = (truth & pred).sum(axis=1).astype(np.float64)
    n_pred, n_true = pred.sum(axis=1), truth.sum(axis=1)
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    recall = np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return {"precision": precision, "recall": recall, "f1": f1}


# --- per tag at top-k -----------------------------------------------------------------------------------------------
def per_tag_at_k(y_true: np.ndarray, scores: np.ndarray, k: int = 5) -> dict[str, Any]:
    """The Corel5k protocol: each image's ``k`` best tags; per-tag precision/recall averaged over tags that occur.

    Returns:
        ``{"mean_precision", "mean_recall", "f1", "n_plus", "n_tags", "precision", "recall"}``; ``precision`` and
        ``recall`` are ``(n_tags,)`` arrays (NaN for tags absent from ``y_true``), ``n_tags`` counts the tags that
        occur, ``f1`` is the harmonic mean of the two means.
    """
    truth, scores = _check(y_true, scores)
    pred = top_k_mask(scores, k)
    tp = (truth & pred).sum(axis=0).astype(np.float64)
    n_pred, n_true = pred.sum(axis=0), truth.sum(axis=0)
    present = n_true > 0
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    recall = np.divide(tp, n_true, out=np.zeros_like(tp), where=present)
    precision[~present] = np.nan
    recall[~present] = np.nan
    mean_p = float(np.nanmean(precision)) if present.any() else float("nan")
    mean_r = float(np.nanmean(recall)) if present.any() else float("nan")
    f1 = 2 * mean_p * mean_r / (mean_p + mean_r) if mean_p + mean_r > 0 else 0.0
    return {
        "mean_precision": mean_p,
        "mean_recall": mean_r,
        "f1": float(f1),
        "n_plus": int((recall[present] > 0).sum()),
        "n_tags": int(present.sum()),
        "precision": precision,
        "recall": recall,
    }


# --- ranking --------------------------------------------------------------------------------------------------------
def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one ranking (1-D), tied scores grouped as in ``sklearn.metrics.average_precision_score``.

    NaN when there is no positive.
    """
    y_true = np.asarray(y_true) > 0
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(y_true.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_truth = scores[order], y_true[order]
    # Last index of each run of equal scores: one operating point per distinct threshold.
    ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    tp = np.cumsum(sorted_truth)[ends]
    precision = tp / (ends + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _columnwise(function, y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.array([function(y_true[:, j], scores[:, j]) for j in range(y_true.shape[1])], dtype=np.float64)


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """mAP: average precision of each tag's ranking of the images, averaged over tags with a positive."""
    truth, scores = _check(y_true, scores)
    values = _columnwise(average_precision, truth, scores)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def mean_image_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """miAP: average precision of each image's ranking of the tags, averaged over images with a true tag."""
    truth, scores = _check(y_true, scores)
    return mean_average_precision(truth.T, scores.T)


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of one ranking (Mann-Whitney U with mid-ranks for ties); NaN without both classes."""
    y_true = np.asarray(y_true).ravel() > 0
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # imported here: scipy.stats takes a second to import, tagging never needs it

    ranks = rankdata(scores)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def micro_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC over all (image, tag) pairs pooled."""
    truth, scores = _check(y_true, scores)
    return roc_auc(truth, scores)


def macro_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of each tag, averaged over tags that have both positives and negatives."""
    truth, scores = _check(y_true, scores)
    values = _columnwise(roc_auc, truth, scores)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


# --- everything at once ---------------------------------------------------------------------------------------------
def evaluate_scores(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    k: int = 5,
    threshold: float | np.ndarray = 0.3,
    max_tags: int | None = 15,
    ranking_scores: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Every metric in one flat dict (the table ``phototag evaluate`` prints).

    Keys: ``n_images``, ``n_tags``; ``image_{precision,recall,f1}_{mean,median,std}`` under the threshold rule;
    ``tag@{k}_mean_precision``, ``tag@{k}_mean_recall``, ``tag@{k}_f1``, ``tag@{k}_n_plus``, ``tag@{k}_n_tags``;
    ``map``, ``miap``, ``micro_auc``, ``macro_auc``.

    ``ranking_scores`` ``(n_images, n_tags)``, when given, choose each image's top ``k`` for the ``tag@k`` metrics
    (a model whose top-k decisions follow rank offsets, :meth:`phototag.model.TagModel.ranking_scores`); every
    other metric uses ``scores``.
    """
    truth, scores = _check(y_true, scores)
    result: dict[str, float | int] = {"n_images": int(truth.shape[0]), "n_tags": int(truth.shape[1])}
    if truth.shape[0] == 0:
        return result
    for name, values in per_image_prf(truth, threshold_mask(scores, threshold, max_tags)).items():
        for stat, value in _summary(values).items():
            result[f"image_{name}_{stat}"] = value
    ranking = scores if ranking_scores is None else _check(y_true, ranking_scores, "ranking_scores")[1]
    at_k = per_tag_at_k(truth, ranking, k)
    for key in ("mean_precision", "mean_recall", "f1", "n_plus", "n_tags"):
        result[f"tag@{k}_{key}"] = at_k[key]
    result["map"] = mean_average_precision(truth, scores)
    result["miap"] = mean_image_average_precision(truth, scores)
    result["micro_auc"] = micro_auc(truth, scores)
    result["macro_auc"] = macro_auc(truth, scores)
    return result

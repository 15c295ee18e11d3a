"""Metrics checked against scikit-learn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

from phototag import metrics


@pytest.fixture(scope="module")
def random_task():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 12)) < 0.25).astype(int)
    y[:, 3] = 0  # a tag that never occurs
    y[5] = 0  # an image without tags
    # Rounded scores so that ties occur, as they do with kNN votes.
    scores = np.round(np.clip(y * 0.3 + rng.random(y.shape) * 0.8, 0, 1), 1)
    return y, scores


def test_average_precision_matches_sklearn_with_ties(random_task):
    y, s = random_task
    for j in range(y.shape[1]):
        if y[:, j].any():
            assert metrics.average_precision(y[:, j], s[:, j]) == pytest.approx(
                average_precision_score(y[:, j], s[:, j])
            )
    assert np.isnan(metrics.average_precision(y[:, 3], s[:, 3]))


def test_map_and_miap_match_sklearn(random_task):
    y, s = random_task
    present = y.any(axis=0)
    expected_map = np.mean([average_precision_score(y[:, j], s[:, j]) for j in np.flatnonzero(present)])
    assert metrics.mean_average_precision(y, s) == pytest.approx(expected_map)
    rows = np.flatnonzero(y.any(axis=1))
    expected_miap = np.mean([average_precision_score(y[i], s[i]) for i in rows])
    assert metrics.mean_image_average_precision(y, s) == pytest.approx(expected_miap)


def test_auc_matches_sklearn(random_task):
    y, s = random_task
    assert metrics.micro_auc(y, s) == pytest.approx(roc_auc_score(y.ravel(), s.ravel()))
    both = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    assert metrics.macro_auc(y, s) == pytest.approx(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in both]))


def test_per_image_prf_matches_sklearn_samples_average(random_task):
    y, s = random_task
    pred = metrics.threshold_mask(s, 0.6, None)
    result = metrics.per_image_prf(y, pred)
    p, r, f, _ = precision_recall_fscore_support(y, pred.astype(int), average="samples", zero_division=0)
    assert result["precision"].mean() == pytest.approx(p)
    assert result["recall"].mean() == pytest.approx(r)
    assert result["f1"].mean() == pytest.approx(f)


def test_per_tag_at_k_hand_computed():
    y = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    s = np.array([[0.9, 0.1, 0.5, 0.0], [0.2, 0.8, 0.3, 0.0], [0.1, 0.7, 0.2, 0.0]])
    # k=1 picks: image0 -> tag0 (right), image1 -> tag1 (right), image2 -> tag1 (wrong)
    result = metrics.per_tag_at_k(y, s, k=1)
    # tag0: P 1/1 R 1/1; tag1: P 1/2 R 1/2; tag2: never predicted P 0, R 0; tag3 absent (not averaged)
    assert result["mean_precision"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert result["mean_recall"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert result["f1"] == pytest.approx(0.5)
    assert result["n_plus"] == 2 and result["n_tags"] == 3
    assert np.isnan(result["recall"][3])


def test_threshold_rule_caps_the_number_of_tags():
    s = np.array([[0.9, 0.8, 0.7, 0.2]])
    assert metrics.threshold_mask(s, 0.3, 2).tolist() == [[True, True, False, False]]
    assert metrics.threshold_mask(s, np.array([0.95, 0.5, 0.5, 0.1]), None).tolist() == [[False, True, True, True]]


def test_evaluate_scores_has_every_metric_and_perfect_scores_are_perfect():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    result = metrics.evaluate_scores(y, y * 0.9 + 0.05, k=2)
    assert result["map"] == result["miap"] == result["micro_auc"] == result["macro_auc"] == 1.0
    assert result["image_f1_mean"] == 1.0 and result["image_f1_std"] == 0.0
    assert result["tag@2_n_plus"] == 3 and result["tag@2_mean_recall"] == 1.0


def test_evaluate_scores_ranking_scores_choose_the_top_k_only():
    y = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    s = np.array([[0.9, 0.1, 0.5, 0.0], [0.2, 0.8, 0.3, 0.0], [0.1, 0.7, 0.2, 0.0]])
    ranking = s + np.array([0.0, 0.0, 0.6, 0.0])  # tag 2 now tops images 1 and 2 (wrong, then right)
    plain = metrics.evaluate_scores(y, s, k=1)
    ranked = metrics.evaluate_scores(y, s, k=1, ranking_scores=ranking)
    # top-1 picks: image0 -> tag2 (wrong), image1 -> tag2 (wrong), image2 -> tag2 (right): only tag2 is ever found
    assert ranked["tag@1_n_plus"] == 1 and plain["tag@1_n_plus"] == 2
    assert ranked["tag@1_mean_recall"] == pytest.approx((0 + 0 + 1) / 3)
    for key in ("map", "miap", "micro_auc", "image_f1_mean"):
        assert ranked[key] == plain[key]
    with pytest.raises(ValueError, match="ranking_scores must be 2-D"):
        metrics.evaluate_scores(y, s, ranking_scores=ranking[:2])


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match="same shape"):
        metrics.mean_average_precision(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.macro_auc(np.ones((2, 2)), np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="'k' parameter must be an int >= 1. Got 0"):
        metrics.per_tag_at_k(np.ones((2, 2)), np.ones((2, 2)), k=0)

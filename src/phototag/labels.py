"""Scoring any tagger on a dataset's label lists (MIRFLICKR's 24 potential / 14 relevant labels).

The refinement paper's protocol: each label is scored by the model's tag of the same name, and the label lists are
the ground truth. A label with no same-name tag gets a constant score (its AP is then the label's prevalence, its AUC
0.5) and is reported in ``labels_without_tag``.

Example:
    >>> import numpy as np
    >>> scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    >>> label_score_matrix(["sky", "dog"], scores, ["dog", "baby"])[0].tolist()
    [[0.1, 0.0], [0.8, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .data import Dataset, ImageRecord
from .metrics import average_precision, macro_auc, mean_average_precision, mean_image_average_precision, micro_auc
from .vocab import normalize_tag

#: ``--against`` name → the record ``meta`` key holding each photo's label names.
LABEL_META_KEYS = {"labels": "labels", "labels-r1": "labels_r1"}


def tag_for_label(label: str, tags: Sequence[str]) -> str | None:
    """The tag of ``tags`` with the label's name (as written, normalised, or with ``_`` read as a space)."""
    known = set(tags)
    for candidate in (label, normalize_tag(label), label.replace("_", " ")):
        if candidate in known:
            return candidate
    return None


def label_score_matrix(tags: Sequence[str], scores: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Scores ``(n_images, n_labels)`` taken from ``scores`` ``(n_images, n_tags)`` by same-name tag.

    Returns:
        The label scores (0 for a label without a same-name tag) and the labels without one.
    """
    scores = np.asarray(scores, dtype=np.float64)
    index = {tag: j for j, tag in enumerate(tags)}
    out = np.zeros((scores.shape[0], len(labels)), dtype=np.float64)
    missing = []
    for i, label in enumerate(labels):
        tag = tag_for_label(label, tags)
        if tag is None:
            missing.append(label)
        else:
            out[:, i] = scores[:, index[tag]]
    return out, missing


def label_names(dataset: Dataset, against: str) -> list[str]:
    """The label names of ``dataset`` for ``against`` (``"labels"`` or ``"labels-r1"``).

    Raises:
        ValueError: Unknown ``against``, or the dataset has no such label lists.
    """
    if against not in LABEL_META_KEYS:
        raise ValueError(f"against must be one of {', '.join(LABEL_META_KEYS)}. Got {against!r} instead.")
    names = (dataset.info.get("label_names") or {}).get(against)
    if not names:
        raise ValueError(
            f"Dataset '{dataset.name}' keeps no '{against}' label lists; import MIRFLICKR-25K's photo layout "
            "with `phototag import mirflickr` to get them."
        )
    return list(names)


def label_truth(records: Sequence[ImageRecord], labels: Sequence[str], against: str) -> np.ndarray:
    """0/1 ground truth ``(n_records, n_labels)`` from each record's ``meta`` label list."""
    key = LABEL_META_KEYS[against]
    column = {name: j for j, name in enumerate(labels)}
    truth = np.zeros((len(records), len(labels)), dtype=np.float32)
    for i, record in enumerate(records):
        for name in record.meta.get(key, []):
            if name in column:
                truth[i, column[name]] = 1.0
    return truth


def evaluate_labels(truth: np.ndarray, label_scores: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """mAP, miAP, micro/macro AUC and each label's AP, the refinement paper's table columns."""
    result: dict[str, Any] = {
        "n_images": int(truth.shape[0]),
        "n_labels": int(truth.shape[1]),
        "map": mean_average_precision(truth, label_scores),
        "miap": mean_image_average_precision(truth, label_scores),
        "micro_auc": micro_auc(truth, label_scores),
        "macro_auc": macro_auc(truth, label_scores),
    }
    for j, name in enumerate(labels):
        result[f"ap_{name}"] = average_precision(truth[:, j], label_scores[:, j])
    return result

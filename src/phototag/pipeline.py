"""The library calls behind the CLI: train a model on a dataset directory, evaluate it, build method inputs.

Data flow: :class:`~phototag.data.Dataset` (manifest + vocabulary) → :func:`build_inputs` (feature store for
``"features"``, the records' user tags for ``"user_tags"``) → :meth:`TaggingMethod.fit` / ``score`` →
:class:`~phototag.model.TagModel` (saved directory) → :mod:`phototag.metrics`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import DEFAULT_BACKBONE, BackboneSpec, create_backbone
from .data import Dataset, ImageRecord
from .features import FeatureStore
from .images import describe_failures
from .methods import create_method
from .metrics import evaluate_scores
from .model import DecisionRule, TagModel

log = logging.getLogger(__name__)


def build_inputs(
    data_keys: Sequence[str],
    *,
    image_paths: Sequence[str] | None = None,
    user_tags: Sequence[Sequence[str]] | None = None,
    feature_store: FeatureStore | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], np.ndarray, list[tuple[str, str]]]:
    """Build the inputs a method declares, for a list of images.

    Args:
        data_keys: The method's declared inputs.
        image_paths: Image files (needed for ``"features"`` and ``"images"``).
        user_tags: The user's own tags per image (needed for ``"user_tags"``).
        feature_store: Extracts ``"features"``.
        progress: Show progress bars.

    Returns:
        ``(inputs, ok, failures)``: inputs for *all* images, ``ok`` (n,) bool marking the usable ones, and
        ``(path, reason)`` for the unusable ones. Use :func:`subset_inputs` to keep the usable rows.
    """
    n = len(image_paths) if image_paths is not None else len(user_tags or [])
    inputs: dict[str, Any] = {}
    ok = np.ones(n, dtype=bool)
    failures: list[tuple[str, str]] = []
    if "features" in data_keys:
        if image_paths is None or feature_store is None:
            raise ValueError("Image features need image paths and a feature store.")
        result = feature_store.extract(image_paths, progress=progress)
        inputs["features"] = result.features
        ok &= result.ok
        failures += result.failures
    if "images" in data_keys:
        if image_paths is None:
            raise ValueError("This method needs image paths.")
        inputs["images"] = list(image_paths)
    if "user_tags" in data_keys and user_tags is not None:
        if len(user_tags) != n:
            raise ValueError(f"Got user tags for {len(user_tags)} images but {n} images.")
        inputs["user_tags"] = [list(tags) for tags in user_tags]
    return inputs, ok, failures


def subset_inputs(inputs: Mapping[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """Rows ``keep`` (bool mask) of every input."""
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, np.ndarray):
            out[key] = value[keep]
        else:
            out[key] = [item for item, good in zip(value, keep, strict=True) if good]
    return out


def default_method_for(dataset: Dataset) -> str:
    """The method ``phototag train`` uses when none is named: ``mlp`` on photos (best on every image set we
    measured, see docs/benchmarks.md), ``knn`` when there are very few training photos.
    """
    if not dataset.has_images():
        raise ValueError(
            f"Dataset '{dataset.name}' has no images (tags only); pass --method with a method that takes user tags."
        )
    n_train = len(dataset.split("train"))
    return "mlp" if n_train >= 100 else "knn"


def records_inputs(
    dataset: Dataset,
    records: Sequence[ImageRecord],
    data_keys: Sequence[str],
    feature_store: FeatureStore | None,
    *,
    progress: bool = True,
    what: str = "images",
) -> tuple[dict[str, Any], np.ndarray]:
    """Inputs for dataset records, with unreadable images reported (by path and count) and masked out."""
    paths = (
        [str(dataset.image_path(r)) for r in records] if any(k in data_keys for k in ("features", "images")) else None
    )
    inputs, ok, failures = build_inputs(
        data_keys,
        image_paths=paths,
        user_tags=[r.user_tags for r in records],
        feature_store=feature_store,
        progress=progress,
    )
    if failures:
        log.warning(
            "%s\nThese %d of %d %s are left out.", describe_failures(failures), len(failures), len(records), what
        )
    return subset_inputs(inputs, ok), ok


def train(
    dataset: str | os.PathLike | Dataset,
    *,
    method: str | None = None,
    config: Mapping[str, Any] | None = None,
    backbone: str | BackboneSpec | None = None,
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    calibrate_thresholds: bool = False,
) -> TagModel:
    """Train a tagging method on a dataset's ``train`` split.

    Validation data comes from the ``val`` split, else a seeded carve of ``val_fraction`` of ``train``.

    Args:
        dataset: Dataset directory (from ``phototag import``) or a loaded :class:`Dataset`.
        method: Registered method name; ``None`` = :func:`default_method_for` the data.
        config: Method settings (fields of the method's ``Config``).
        backbone: Backbone name or spec for image features; ``None`` = ``efficientnet_lite0``.
        cache_dir: Feature cache root (``None`` = ``~/.cache/phototag``).
        out: If given, save the model directory here.
        val_fraction: Share of train carved out for validation when there is no ``val`` split.
        seed: Seed of the validation carve.
        progress: Progress bars.
        calibrate_thresholds: Set per-tag thresholds maximising each tag's F1 on the validation images
            (:func:`phototag.calibration.per_tag_thresholds`); the metrics with them (optimistic: measured on the
            images they were fitted on) go to ``model.info["validation_calibrated"]``.

    Returns:
        The trained :class:`TagModel`, with validation metrics in ``model.info["validation"]``.
    """
    ds = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset)
    vocab = ds.vocab if ds.vocab is not None else ds.fit_vocab()
    name = method or default_method_for(ds)
    tagger = create_method(name, config)
    train_records, val_records = ds.train_val(val_fraction=val_fraction, seed=seed)
    if not train_records:
        raise ValueError(f"Dataset '{ds.name}' has no training records (split 'train' is empty).")
    store, spec = None, None
    if "features" in tagger.data_keys:
        bb = create_backbone(backbone if backbone is not None else DEFAULT_BACKBONE)
        spec = bb.spec
        store = FeatureStore(bb, cache_dir)
    train_inputs, train_ok = records_inputs(
        ds, train_records, tagger.data_keys, store, progress=progress, what="training images"
    )
    targets = vocab.transform([r.tags for r in train_records])[train_ok]
    val_inputs, val_targets = None, None
    if val_records:
        val_inputs, val_ok = records_inputs(
            ds, val_records, tagger.data_keys, store, progress=progress, what="validation images"
        )
        val_targets = vocab.transform([r.tags for r in val_records])[val_ok]
    log.info(
        "Training %s on %d images, %d tags (%d validation images)",
        name,
        len(targets),
        len(vocab),
        0 if val_targets is None else len(val_targets),
    )
    tagger.fit(
        train_inputs,
        targets,
        val_inputs=val_inputs,
        val_targets=val_targets,
        progress=progress,
        tag_names=list(vocab.tags_),
    )
    info: dict[str, Any] = {
        "dataset": ds.name,
        "dataset_dir": str(ds.root) if ds.root else None,
        "n_train": int(len(targets)),
        "n_val": 0 if val_targets is None else int(len(val_targets)),
        "seed": seed,
    }
    model = TagModel(tagger, vocab, backbone_spec=spec, decision=DecisionRule(), info=info)
    if val_inputs is not None and len(val_targets):
        val_scores = tagger.score(val_inputs)
        model.info["validation"] = evaluate_scores(
            val_targets, val_scores, ranking_scores=model.ranking_scores(val_scores)
        )
        if calibrate_thresholds:
            from .calibration import per_tag_thresholds

            model.decision.per_tag_threshold = per_tag_thresholds(val_targets, val_scores)
            model.info["validation_calibrated"] = evaluate_scores(
                val_targets, val_scores, threshold=model.decision.per_tag_threshold
            )
    elif calibrate_thresholds:
        raise ValueError("Calibrating per-tag thresholds needs validation images (a 'val' split or val_fraction > 0).")
    if out is not None:
        model.save(out)
    return model


def evaluate(
    model: TagModel | str | os.PathLike,
    dataset: str | os.PathLike | Dataset,
    *,
    split: str = "test",
    k: int = 5,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    balanced: bool | None = None,
    against: str | None = None,
) -> dict[str, float]:
    """All metrics of ``model`` on one split of ``dataset`` (see :func:`phototag.metrics.evaluate_scores`).

    ``against="labels"`` / ``"labels-r1"`` scores the model on the dataset's label lists instead of its tags (each
    label by the model's tag of the same name; :func:`phototag.labels.evaluate_labels`).

    ``balanced`` ranks each image's top ``k`` by the method's balancing offsets (``None``: the model's
    ``decision.balanced``; see :meth:`phototag.model.TagModel.rank_offset`); every other metric is unaffected.

    Ground-truth tags are mapped into the model's vocabulary; tags the model does not know are counted in
    ``"unknown_true_tags"`` (they cannot be predicted).
    """
    if not isinstance(model, TagModel):
        model = TagModel.load(model)
    ds = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset)
    records = ds.split(split)
    if not records:
        present = {s: len(ds.split(s)) for s in ("train", "val", "test")}
        raise ValueError(f"Dataset '{ds.name}' has no '{split}' records (records per split: {present}).")
    store = model.feature_store(cache_dir) if "features" in model.data_keys else None
    inputs, ok = records_inputs(ds, records, model.data_keys, store, progress=progress, what=f"{split} images")
    targets = model.vocab.transform([r.tags for r in records])[ok]
    unknown = sum(model.vocab.last_unknown_.values()) if hasattr(model.vocab, "last_unknown_") else 0
    scores = model.score_inputs(inputs)
    if against is not None:
        from .labels import evaluate_labels, label_names, label_score_matrix, label_truth

        names = label_names(ds, against)
        label_scores, missing = label_score_matrix(model.vocab.tags_, scores, names)
        truth = label_truth([r for r, good in zip(records, ok, strict=True) if good], names, against)
        return {**evaluate_labels(truth, label_scores, names), "labels_without_tag": " ".join(missing) or "none"}
    threshold = model.decision.per_tag_threshold
    threshold = model.decision.threshold if threshold is None else threshold
    result = evaluate_scores(
        targets,
        scores,
        k=k,
        threshold=threshold,
        max_tags=model.decision.max_tags,
        ranking_scores=model.ranking_scores(scores, balanced=balanced),
    )
    result["unknown_true_tags"] = int(unknown)
    result["unreadable_images"] = int((~ok).sum())
    return result


def load_dataset(path: str | os.PathLike) -> Dataset:
    return Dataset.load(Path(path))

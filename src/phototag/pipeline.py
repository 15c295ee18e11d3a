"""The library calls behind the CLI: train a model on a dataset directory, evaluate it, build method inputs.

Data flow: :class:`~phototag.data.Dataset` (manifest + vocabulary) → :func:`build_inputs` (feature store for
``"features"``, the records' user tags for ``"user_tags"``) → :meth:`TaggingMethod.fit` / ``score`` →
:class:`~phototag.model.TagModel` (saved directory) → :mod:`phototag.metrics`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import DEFAULT_BACKBONE, BackboneSpec, resolve_spec
from .data import Dataset, ImageRecord
from .images import describe_failures
from .inputs import build_inputs, needs_images
from .methods import create_method, get_method_class
from .metrics import evaluate_scores
from .model import DecisionRule, TagModel
from .runtime import RunOptions

log = logging.getLogger(__name__)


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


def record_items(dataset: Dataset, records: Sequence[ImageRecord], data_keys: Sequence[str]) -> list[str]:
    """What the input layer reads for ``records``: their image paths for methods that read photos, else their ids
    (labels only: nothing is opened)."""
    if needs_images(data_keys):
        return [str(dataset.image_path(r)) for r in records]
    return [r.id for r in records]


def records_inputs(
    dataset: Dataset,
    records: Sequence[ImageRecord],
    method: Any,
    *,
    backbone_spec: BackboneSpec | None = None,
    options: RunOptions | None = None,
    what: str = "images",
) -> tuple[dict[str, Any], np.ndarray]:
    """Inputs for dataset records, with unreadable images reported (by path and count) and masked out.

    Training reads ``"images"`` as checked paths (streamed from disk by the method), not decoded pictures.
    """
    items = record_items(dataset, records, method.data_keys)
    batch = build_inputs(
        method,
        items,
        backbone_spec=backbone_spec,
        user_tags=[r.user_tags for r in records],
        options=options,
        images_as="paths",
        desc=what,
    )
    if batch.failures:
        log.warning(
            "%s\nThese %d of %d %s are left out.",
            describe_failures(batch.failures),
            len(batch.failures),
            len(records),
            what,
        )
    return batch.inputs, batch.ok


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
    options: RunOptions | None = None,
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
        options: Run options for feature extraction (workers, batch size, device); ``cache_dir`` and ``progress``
            override theirs.
        calibrate_thresholds: Set per-tag thresholds maximising each tag's F1 on the validation images
            (:func:`phototag.calibration.per_tag_thresholds`); the metrics with them (optimistic: measured on the
            images they were fitted on) go to ``model.info["validation_calibrated"]``.

    Returns:
        The trained :class:`TagModel`, with validation metrics in ``model.info["validation"]``.
    """
    ds = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset)
    vocab = ds.vocab if ds.vocab is not None else ds.fit_vocab()
    name = method or default_method_for(ds)
    config = dict(config or {})
    if backbone is not None and "backbone" in {f.name for f in dataclasses.fields(get_method_class(name).Config)}:
        # Methods that build their own backbone (cnn) take --backbone as their setting.
        config.setdefault("backbone", backbone.name if isinstance(backbone, BackboneSpec) else backbone)
        backbone = None
    tagger = create_method(name, config)
    train_records, val_records = ds.train_val(val_fraction=val_fraction, seed=seed)
    if not train_records:
        raise ValueError(f"Dataset '{ds.name}' has no training records (split 'train' is empty).")
    options = (options or RunOptions()).replace(cache_dir=cache_dir, progress=progress)
    spec = None
    if "features" in tagger.data_keys:
        spec = resolve_spec(backbone if backbone is not None else DEFAULT_BACKBONE)
    elif backbone is not None:
        raise ValueError(
            f"--backbone applies to methods on one backbone's features; method '{name}' does not read them"
            + (
                " (ensemble members name theirs: 'mlp@efficientnet_lite1')."
                if name == "ensemble"
                else f" (it reads {', '.join(tagger.feature_backbones())}; its settings say which)."
                if tagger.feature_backbones()
                else "."
            )
        )
    train_inputs, train_ok = records_inputs(
        ds, train_records, tagger, backbone_spec=spec, options=options, what="training images"
    )
    targets = vocab.transform([r.tags for r in train_records])[train_ok]
    val_inputs, val_targets = None, None
    if val_records:
        val_inputs, val_ok = records_inputs(
            ds, val_records, tagger, backbone_spec=spec, options=options, what="validation images"
        )
        val_targets = vocab.transform([r.tags for r in val_records])[val_ok]
    log.info(
        "Training %s on %d images, %d tags (%d validation images)",
        name,
        len(targets),
        len(vocab),
        0 if val_targets is None else len(val_targets),
    )
    tagger.run_options = options
    try:
        tagger.fit(
            train_inputs,
            targets,
            val_inputs=val_inputs,
            val_targets=val_targets,
            progress=progress,
            tag_names=list(vocab.tags_),
        )
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in ("torch", "torchvision", "timm", "sklearn"):
            raise ImportError(
                f"Training method '{name}' needs {err.name}, which this installation lacks: "
                'pip install "phototag[train]"'
            ) from None
        raise
    info: dict[str, Any] = {
        "dataset": ds.name,
        "dataset_dir": str(ds.root) if ds.root else None,
        "n_train": int(len(targets)),
        "n_val": 0 if val_targets is None else int(len(val_targets)),
        "seed": seed,
    }
    balanced = tagger.balanced_by_default and tagger.rank_offset() is not None
    model = TagModel(tagger, vocab, backbone_spec=spec, decision=DecisionRule(balanced=balanced), info=info)
    if val_inputs is not None and len(val_targets):
        val_scores = tagger.score(val_inputs)
        if tagger.threshold_from_validation:
            from .calibration import global_threshold

            model.decision.threshold = global_threshold(val_targets, val_scores, max_tags=model.decision.max_tags)
            model.info["threshold_chosen_on"] = "validation images (mean per-image F1)"
        model.info["validation"] = evaluate_scores(
            val_targets,
            val_scores,
            threshold=model.decision.threshold,
            ranking_scores=model.ranking_scores(val_scores),
        )
        if calibrate_thresholds:
            from .calibration import per_tag_thresholds

            model.decision.per_tag_threshold = per_tag_thresholds(val_targets, val_scores)
            model.info["validation_calibrated"] = evaluate_scores(
                val_targets, val_scores, threshold=model.decision.per_tag_threshold
            )
    elif calibrate_thresholds:
        raise ValueError("Calibrating per-tag thresholds needs validation images (a 'val' split or val_fraction > 0).")
    elif tagger.threshold_from_validation:
        log.warning(
            "No validation images to choose the %s model's threshold on: it stays %.2f, which may give too few or too "
            "many tags; "
            "pass --threshold when tagging, or train with a 'val' split or --val-fraction > 0.",
            name,
            model.decision.threshold,
        )
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
    options: RunOptions | None = None,
    against: str | None = None,
    all_words: bool = False,
) -> dict[str, float]:
    """All metrics of ``model`` on one split of ``dataset`` (see :func:`phototag.metrics.evaluate_scores`).

    ``against="labels"`` / ``"labels-r1"`` scores the model on the dataset's label lists instead of its tags (each
    label by the model's tag of the same name; :func:`phototag.labels.evaluate_labels`).

    ``balanced`` ranks each image's top ``k`` by the method's balancing offsets (``None``: the model's
    ``decision.balanced``; see :meth:`phototag.model.TagModel.rank_offset`); every other metric is unaffected.

    Ground-truth tags are mapped into the model's vocabulary; tags the model does not know are counted in
    ``"unknown_true_tags"`` (they cannot be predicted).

    Only the model's words that the dataset's vocabulary knows are scored and compete for each photo's ``k``
    places, as in a benchmark's protocol: a model with a larger vocabulary (the default model's ImageNet keywords
    on Corel5k) would otherwise spend places on words the dataset can neither confirm nor refute. How many of the
    model's words were left out is ``"model_words_left_out"``. ``all_words=True`` ranks every word of the model.
    """
    if not isinstance(model, TagModel):
        model = TagModel.load(model)
    ds = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset)
    records = ds.split(split)
    if not records:
        present = {s: len(ds.split(s)) for s in ("train", "val", "test")}
        raise ValueError(f"Dataset '{ds.name}' has no '{split}' records (records per split: {present}).")
    options = (options or RunOptions()).replace(cache_dir=cache_dir, progress=progress)
    items = record_items(ds, records, model.data_keys)
    scored = model.score_images(items, user_tags=[r.user_tags for r in records], options=options)
    if scored.failures:
        log.warning(
            "%s\nThese %d %s images are left out.", describe_failures(scored.failures), len(scored.failures), split
        )
    ok = scored.ok
    targets = model.vocab.transform([r.tags for r in records])[ok]
    unknown = sum(model.vocab.last_unknown_.values()) if hasattr(model.vocab, "last_unknown_") else 0
    scores = scored.scores
    kept = None if all_words or against is not None else dataset_words(model, ds)
    if kept is not None:
        scores, targets = scores[:, kept], targets[:, kept]
    if against is not None:
        from .labels import evaluate_labels, label_names, label_score_matrix, label_truth

        names = label_names(ds, against)
        label_scores, missing = label_score_matrix(model.vocab.tags_, scores, names)
        truth = label_truth([r for r, good in zip(records, ok, strict=True) if good], names, against)
        return {**evaluate_labels(truth, label_scores, names), "labels_without_tag": " ".join(missing) or "none"}
    n_model = len(model.vocab)
    threshold = model.decision.own_thresholds(n_model)
    ranking = model.ranking_scores(scored.scores, balanced=balanced, columns=kept)
    if kept is not None:
        threshold = threshold[kept]
    result = evaluate_scores(
        targets, scores, k=k, threshold=threshold, max_tags=model.decision.max_tags, ranking_scores=ranking
    )
    result["unknown_true_tags"] = int(unknown)
    result["unreadable_images"] = int((~ok).sum())
    result["model_words_left_out"] = 0 if kept is None else int(n_model - kept.sum())
    return result


def dataset_words(model: TagModel, dataset: Dataset) -> np.ndarray | None:
    """``(n_model_tags,)`` bool: the model's words that ``dataset``'s vocabulary maps onto; ``None`` when that is
    all of them, or when the dataset has no vocabulary or shares no word with the model (nothing to restrict to)."""
    if dataset.vocab is None or not len(dataset.vocab):
        return None
    known = model.vocab.transform([[tag] for tag in dataset.vocab.tags_]).any(axis=0)
    return None if known.all() or not known.any() else known


def load_dataset(path: str | os.PathLike) -> Dataset:
    return Dataset.load(Path(path))

"""Tag refinement of a whole dataset: learn from the users' noisy tags, write the dataset with refined tags.

:func:`refine_dataset` is what ``phototag refine DATASET_DIR --out REFINED_DIR`` runs:

1. The noisy source is every record's ``user_tags`` (all splits: refinement is transductive and never reads the
   target ``tags``). A :class:`~phototag.vocab.TagVocabulary` is fitted on them (the dataset's vocabulary settings);
   user tags it rejects (numbers, camera brands, below ``min_count``) cannot be judged and are *passed through*.
2. Inputs: image features from the backbone (feature store) when the dataset has images; for tag-only data
   (MIRFLICKR-25K, HARRISON) :func:`tag_context_features` (a truncated SVD of the TF-IDF user-tag matrix) stand in,
   so the "visual" neighbourhood becomes a tag-context neighbourhood.
3. The method (default ``refine``; any registered method works, e.g. the baselines) is fitted on the noisy tag
   matrix and scores the same images (:func:`training_scores`).
4. Refined tags = the tags scoring at least ``threshold`` (at most ``max_tags``) + the passed-through tags.

The written dataset is the input with, per record: ``tags`` = the refined tags (so any method trains on them);
``user_tags`` unchanged; ``meta["original_tags"]`` = the previous ``tags``; ``meta["refine"]`` = ``kept``,
``added``, ``removed``, ``passed_through`` tags and ``scores`` (the refined score of every user tag and every
selected tag). Records whose image cannot be read keep their user tags as ``tags`` and say why in
``meta["refine"]["skipped"]``. The report (``dataset.json`` → ``info.refinement``) checks counts in == counts out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .backbones import DEFAULT_BACKBONE, BackboneSpec, resolve_spec
from .data import Dataset, ImageRecord
from .methods import RefinesTrainingScores, TaggingMethod, create_method
from .model import DecisionRule
from .pipeline import records_inputs
from .runtime import RunOptions
from .vocab import TagVocabulary, normalize_tag

log = logging.getLogger(__name__)


@dataclass
class RefinementResult:
    """What :func:`refine_dataset` produced.

    Attributes:
        dataset: The refined dataset (saved at ``out`` when given).
        method: The fitted method.
        vocab: Vocabulary of the user tags (column order of ``scores``).
        scores: ``(n_refined, n_tags)`` refined scores of the records in ``refined_ids`` order.
        refined_ids: Ids of the records that were refined (readable images).
        report: Counts in and out (also in ``dataset.info["refinement"]``).
    """

    dataset: Dataset
    method: TaggingMethod
    vocab: TagVocabulary
    scores: np.ndarray
    refined_ids: list[str]
    report: dict[str, Any]


def training_scores(method: TaggingMethod, inputs: Mapping[str, Any]) -> np.ndarray:
    """Refined scores ``(n, n_tags)`` of the images a method was just fitted on.

    Methods whose scores of their own training images differ from :meth:`~TaggingMethod.score` (transductive
    ``rpca``, ``tag_vote`` which excludes the image itself from its neighbours, ``refine``) declare it with
    :class:`~phototag.methods.base.RefinesTrainingScores` and set ``refined_scores_`` in ``fit``; any other method
    scores the inputs again.
    """
    if isinstance(method, RefinesTrainingScores):
        return np.asarray(method.refined_scores_, dtype=np.float32)
    return method.score(inputs)


def tag_context_features(tags: np.ndarray, dim: int = 64, *, seed: int = 0) -> np.ndarray:
    """Stand-in features ``(n, dim')`` for tag-only data: L2-normalised truncated SVD of the TF-IDF tag matrix.

    ``dim' = min(dim, n_tags − 1)``; images without tags get the zero vector.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    tags = (np.asarray(tags) > 0).astype(np.float32)
    if tags.ndim != 2 or tags.shape[1] < 2:
        raise ValueError(f"tag_context_features needs a (n, n_tags >= 2) matrix. Got shape {tags.shape} instead.")
    weighted = TfidfTransformer().fit_transform(tags)
    reduced = TruncatedSVD(n_components=min(dim, tags.shape[1] - 1), random_state=seed).fit_transform(weighted)
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    return (reduced / np.maximum(norms, 1e-12)).astype(np.float32)


def simulate_user_noise(
    truth: np.ndarray, *, drop_rate: float = 0.3, add_rate: float = 0.3, seed: int = 0
) -> np.ndarray:
    """Noisy user tags ``(n, C)`` from clean ones: drop and add tags, as real users do.

    Each true tag is dropped with probability ``drop_rate``; each image gets Binomial(#true tags, ``add_rate``) wrong
    tags, drawn (without replacement, among its non-true tags) in proportion to the tags' frequency, as popular tags
    are the ones users add by habit.

    Example:
        >>> truth = np.eye(4)[[0, 1, 2, 3] * 5]
        >>> noisy = simulate_user_noise(truth, drop_rate=0.0, add_rate=0.0)
        >>> bool((noisy == truth).all())
        True
    """
    truth = (np.asarray(truth) > 0).astype(np.float32)
    if not (0 <= drop_rate <= 1 and 0 <= add_rate <= 1):
        raise ValueError(f"drop_rate and add_rate must lie in [0, 1]. Got {drop_rate} and {add_rate} instead.")
    rng = np.random.default_rng(seed)
    noisy = truth * (rng.random(truth.shape) >= drop_rate)
    frequency = truth.sum(axis=0) + 1.0
    n_add = rng.binomial(truth.sum(axis=1).astype(int), add_rate)
    for i in np.flatnonzero(n_add):
        weights = frequency * (truth[i] == 0)
        k = min(int(n_add[i]), int((weights > 0).sum()))
        if k:
            noisy[i, rng.choice(truth.shape[1], size=k, replace=False, p=weights / weights.sum())] = 1.0
    return noisy.astype(np.float32)


def with_simulated_user_tags(
    dataset: Dataset, *, drop_rate: float = 0.3, add_rate: float = 0.3, seed: int = 0, name: str | None = None
) -> Dataset:
    """A copy of ``dataset`` whose ``user_tags`` are its clean ``tags`` with simulated user noise
    (:func:`simulate_user_noise` over the dataset's vocabulary; the clean ``tags`` stay as the truth).

    This is experiment 1's data (Corel5k with simulated users), as a dataset ``phototag refine`` can read.
    """
    if dataset.vocab is None:
        raise ValueError(f"Dataset '{dataset.name}' has no vocabulary yet; call fit_vocab().")
    noisy = simulate_user_noise(dataset.target_matrix(), drop_rate=drop_rate, add_rate=add_rate, seed=seed)
    names = dataset.vocab.tags_
    records = [
        replace(r, user_tags=[names[j] for j in np.flatnonzero(row)])
        for r, row in zip(dataset.records, noisy, strict=True)
    ]
    info = {**dataset.info, "simulated_user_tags": {"drop_rate": drop_rate, "add_rate": add_rate, "seed": seed}}
    out = Dataset(records, name=name or f"{dataset.name}-noisy", image_root=dataset.image_root, info=info)
    out.vocab = dataset.vocab
    return out


def refine_scores(
    method: str | TaggingMethod,
    inputs: Mapping[str, Any],
    noisy: np.ndarray,
    tag_names: Sequence[str],
    *,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[TaggingMethod, np.ndarray]:
    """Fit ``method`` on the noisy tag matrix ``(n, C)`` and return it with the refined scores ``(n, C)``."""
    tagger = create_method(method, config) if isinstance(method, str) else method
    tagger.fit(inputs, noisy, progress=progress, tag_names=list(tag_names))
    return tagger, training_scores(tagger, inputs)


def _unique_normalized(vocab: TagVocabulary, tags: Sequence[str]) -> list[str]:
    """Each distinct non-empty normalised tag once, in order (unlike ``vocab.normalize``, nothing else is dropped)."""
    seen: dict[str, None] = {}
    for raw in tags:
        tag = normalize_tag(raw, lemmatize=vocab.lemmatize, language=vocab.language)
        if tag:
            seen.setdefault(tag, None)
    return list(seen)


def refine_dataset(
    dataset: str | os.PathLike | Dataset,
    out: str | os.PathLike | None = None,
    *,
    method: str = "refine",
    config: Mapping[str, Any] | None = None,
    backbone: str | BackboneSpec | None = None,
    cache_dir: str | os.PathLike | None = None,
    threshold: float = 0.5,
    max_tags: int | None = 15,
    progress: bool = True,
) -> RefinementResult:
    """Refine the user tags of every record of a dataset (see the module docstring for what is written).

    Args:
        dataset: Dataset directory or loaded :class:`Dataset`; its records' ``user_tags`` are refined.
        out: Write the refined dataset here (atomically); ``None`` = don't write.
        method: Registered method that learns from the noisy tags (``refine``, or a baseline).
        config: The method's settings.
        backbone: Backbone for image features (``None`` = ``efficientnet_lite0``); unused for tag-only data.
        cache_dir: Feature cache root.
        threshold: Refined tags are those scoring at least this.
        max_tags: At most this many refined tags per image (``None`` = no cap).
        progress: Progress bars.

    Raises:
        ValueError: No record has user tags, or the method cannot be used on this data.
    """
    ds = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset)
    records = ds.records
    if not any(r.user_tags for r in records):
        raise ValueError(
            f"Dataset '{ds.name}' has no user_tags to refine (every record's user_tags is empty); import it with a "
            "user_tags column (e.g. `phototag import csv` with a user_tags column)."
        )
    settings = ds.vocab.get_params() if ds.vocab is not None else {}
    vocab = TagVocabulary(**settings).fit(r.user_tags for r in records)
    if len(vocab) < 2:
        raise ValueError(f"Dataset '{ds.name}': its user tags give a vocabulary of {len(vocab)} tag(s); need >= 2.")
    tagger = create_method(method, config)
    noisy_all = vocab.transform(r.user_tags for r in records)
    ok = np.ones(len(records), dtype=bool)
    skipped: dict[str, str] = {}
    if "images" in tagger.data_keys and not ds.has_images():
        raise ValueError(f"Method '{method}' needs image files, but dataset '{ds.name}' has none (tag-only data).")
    if "features" in tagger.data_keys and ds.has_images():
        spec = resolve_spec(backbone if backbone is not None else DEFAULT_BACKBONE)
        options = RunOptions(cache_dir=cache_dir, progress=progress)
        inputs, ok = records_inputs(ds, records, tagger, backbone_spec=spec, options=options, what="images to refine")
        for record, good in zip(records, ok, strict=True):
            if not good:
                skipped[record.id] = "image could not be read"
    else:
        inputs = {"user_tags": [r.user_tags for r in records]} if "user_tags" in tagger.data_keys else {}
        if "features" in tagger.data_keys:
            inputs["features"] = tag_context_features(noisy_all)
            log.info("Dataset '%s' has no images: tag-context features stand in for image features.", ds.name)
            if getattr(tagger.config, "extra_backbones", None):  # no images, so no other backbones' features either
                tagger = create_method(method, {**tagger.config_dict(), "extra_backbones": []})
    if ok.sum() < 2:
        raise ValueError(f"Dataset '{ds.name}': fewer than 2 records could be used for refinement.")
    refined_records = [r for r, good in zip(records, ok, strict=True) if good]
    tagger, scores = refine_scores(tagger, inputs, noisy_all[ok], vocab.tags_, progress=progress)
    chosen = DecisionRule(threshold=threshold, max_tags=max_tags).select(scores)
    chosen_by_id = {r.id: (row, picks) for r, row, picks in zip(refined_records, scores, chosen, strict=True)}

    totals = dict.fromkeys(
        ("user_tags_raw", "user_tags", "duplicates_or_empty", "kept", "removed", "added", "passed_through", "tags_out"),
        0,
    )
    new_records: list[ImageRecord] = []
    for record in records:
        unique = _unique_normalized(vocab, record.user_tags)
        known = [t for t in unique if t in vocab]
        unknown = [t for t in unique if t not in vocab]
        totals["user_tags_raw"] += len(record.user_tags)
        totals["user_tags"] += len(unique)
        totals["duplicates_or_empty"] += len(record.user_tags) - len(unique)
        totals["passed_through"] += len(unknown)
        meta = {**record.meta, "original_tags": list(record.tags)}
        if record.id in chosen_by_id:
            row, picks = chosen_by_id[record.id]
            selected = [vocab.tags_[j] for j, _ in picks]
            kept = [t for t in known if t in set(selected)]
            removed = [t for t in known if t not in set(selected)]
            added = [t for t in selected if t not in set(known)]
            shown = dict.fromkeys(known + selected)
            info = {
                "kept": kept,
                "added": added,
                "removed": removed,
                "passed_through": unknown,
                "scores": {t: round(float(row[vocab.index_[t]]), 4) for t in shown},
            }
            tags = selected + unknown
        else:
            kept, removed, added = known, [], []
            info = {"skipped": skipped[record.id], "kept": known, "passed_through": unknown}
            tags = known + unknown
        totals["kept"] += len(kept)
        totals["removed"] += len(removed)
        totals["added"] += len(added)
        totals["tags_out"] += len(tags)
        new_records.append(replace(record, tags=tags, meta={**meta, "refine": info}))

    if (
        totals["user_tags"] != totals["kept"] + totals["removed"] + totals["passed_through"]
        or totals["tags_out"] != totals["kept"] + totals["added"] + totals["passed_through"]
    ):
        raise RuntimeError(f"Tag counts do not add up (a bug, please report it): {totals}")
    if len(new_records) != len(records):
        raise RuntimeError(f"Record counts do not add up: {len(records)} in, {len(new_records)} out.")
    report = {
        "method": method,
        "config": tagger.config_dict(),
        "threshold": threshold,
        "max_tags": max_tags,
        "records_in": len(records),
        "records_out": len(new_records),
        "records_refined": int(ok.sum()),
        "records_skipped": len(skipped),
        "skipped": dict(list(skipped.items())[:100]),
        "vocabulary": len(vocab),
        "features": "images" if ds.has_images() else "tag context (no images)",
        **totals,
        "unknown_user_tags": dict(list(vocab.last_unknown_.items())[:100]),
        "check": "user_tags = kept + removed + passed_through; tags_out = kept + added + passed_through",
    }
    info = {**ds.info, "refined_from": str(ds.root) if ds.root else ds.name, "refinement": report}
    refined = Dataset(new_records, name=f"{ds.name}-refined", image_root=ds.image_root, info=info)
    refined.fit_vocab(**settings)
    if out is not None:
        refined.save(out)
    return RefinementResult(refined, tagger, vocab, scores, [r.id for r in refined_records], report)

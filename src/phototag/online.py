"""Online learning: teach a trained model new images and brand-new tags without retraining it from scratch.

The model's vocabulary grows (new tags are appended, old columns keep their place) and the method learns from the
new images through :meth:`TaggingMethod.update`; methods without ``supports_update`` are refused with a clear
message. Behind ``phototag update MODEL_DIR DATASET_DIR``.

Example:
    >>> model = TagModel.load("models/drel")  # doctest: +SKIP
    >>> update_model(model, ["new/001.jpg", "new/002.jpg"], [["sky", "kite"], ["kite"]])  # doctest: +SKIP
    >>> model.save("models/drel")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .data import Dataset
from .images import describe_failures
from .inputs import build_inputs
from .model import TagModel
from .runtime import RunOptions

log = logging.getLogger(__name__)


def update_model(
    model: TagModel,
    image_paths: Sequence[str | os.PathLike],
    tag_lists: Sequence[Sequence[str]],
    *,
    user_tags: Sequence[Sequence[str]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    min_new_tag_count: int = 1,
    progress: bool = True,
) -> TagModel:
    """Teach ``model`` (in place) new images and their tags; returns the same model.

    Tags not yet in the vocabulary that occur on at least ``min_new_tag_count`` of the new images are appended to
    it (normalised as the vocabulary does); rarer unknown tags are ignored and logged. Old tags keep their columns.
    Unreadable images are reported by path and left out. Nothing is saved: call ``model.save(...)``.

    Args:
        model: A trained model whose method has ``supports_update`` (e.g. ``drel``, ``knn``).
        image_paths: The new images (n,).
        tag_lists: Their tags, one list per image (n,); an image may carry old and new tags.
        user_tags: The users' own tags per image, for methods that take them as input.
        cache_dir: Feature cache root (``None`` = ``~/.cache/phototag``).
        min_new_tag_count: Images a new tag must occur on to enter the vocabulary.
        progress: Progress bars.

    Raises:
        ValueError: The method cannot learn online, the lengths differ, or no new image could be read.
    """
    method = model.method
    if not method.supports_update:
        updatable = ", ".join(name for name in _updatable_methods())
        raise ValueError(
            f"Model method '{method.name}' does not support online updates (methods that do: {updatable}); "
            "retrain it with `phototag train`."
        )
    if len(tag_lists) != len(image_paths):
        raise ValueError(f"Got {len(tag_lists)} tag lists for {len(image_paths)} images; give one list per image.")
    if user_tags is not None and len(user_tags) != len(image_paths):
        raise ValueError(f"Got {len(user_tags)} user-tag lists for {len(image_paths)} images.")
    if min_new_tag_count < 1:
        raise ValueError(f"min_new_tag_count must be an int >= 1. Got {min_new_tag_count!r} instead.")
    if not image_paths:
        raise ValueError("No new images to learn from.")
    vocab = copy.deepcopy(model.vocab)
    counts: Counter[str] = Counter(t for tags in tag_lists for t in vocab.normalize(tags) if t not in vocab)
    new_tags = [t for t, c in counts.items() if c >= min_new_tag_count]
    ignored = {t: c for t, c in counts.items() if c < min_new_tag_count}
    if ignored:
        log.warning(
            "%d new tag(s) occur on fewer than %d images and are not learned: %s",
            len(ignored),
            min_new_tag_count,
            ", ".join(sorted(ignored)[:20]),
        )
    vocab.add_tags(new_tags)
    paths = [str(p) for p in image_paths]
    batch = build_inputs(
        method,
        paths,
        backbone_spec=model.backbone_spec,
        user_tags=user_tags,
        options=RunOptions(cache_dir=cache_dir, progress=progress),
        stores=model.stores(RunOptions(cache_dir=cache_dir)) if "features" in model.data_keys else None,
        images_as="paths",
        search=model.graph_folders(),
    )
    inputs, ok, failures = batch.inputs, batch.ok, batch.failures
    if failures:
        log.warning(
            "%s\nThese %d of %d new images are left out.", describe_failures(failures), len(failures), len(paths)
        )
    if not ok.any():
        raise ValueError(f"None of the {len(paths)} new images could be read; nothing to learn.")
    targets = vocab.transform(tag_lists)[ok]
    method.update(inputs, targets, progress=progress, tag_names=list(vocab.tags_))
    for tag in new_tags:
        vocab.counts_[tag] = int(counts[tag])
    model.vocab = vocab
    model.info.setdefault("updates", []).append(
        {"n_images": int(ok.sum()), "unreadable_images": len(failures), "new_tags": new_tags}
    )
    log.info("Updated %s on %d images; %d new tag(s)", method.name, int(ok.sum()), len(new_tags))
    return model


def update_from_dataset(
    model: TagModel,
    dataset: str | os.PathLike | Dataset,
    *,
    splits: Sequence[str] = ("train", "val"),
    cache_dir: str | os.PathLike | None = None,
    min_new_tag_count: int = 1,
    progress: bool = True,
) -> TagModel:
    """:func:`update_model` on the records of some splits of a dataset directory (from ``phototag import``).

    The dataset's own vocabulary is not used: its records' raw tags are mapped into (and grow) the model's.
    """
    ds = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset)
    records = [r for r in ds.records if r.split in set(splits)]
    if not records:
        raise ValueError(f"Dataset '{ds.name}' has no records in split(s) {list(splits)} ({ds.split_counts()}).")
    needs_images = any(key in model.data_keys for key in ("features", "images"))
    return update_model(
        model,
        [str(ds.image_path(r)) for r in records] if needs_images else [r.id for r in records],
        [r.tags for r in records],
        user_tags=[r.user_tags for r in records],
        cache_dir=cache_dir,
        min_new_tag_count=min_new_tag_count,
        progress=progress,
    )


def _updatable_methods() -> list[str]:
    from .methods import get_method_class, list_methods

    return [name for name in list_methods() if get_method_class(name).supports_update]


__all__: list[Any] = ["update_from_dataset", "update_model"]

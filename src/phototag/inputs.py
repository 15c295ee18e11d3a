"""Method inputs from photos: exactly what a method declares in ``data_keys``, built by the one input layer.

``"features"`` (the model's backbone), ``"backbone_features"`` (several backbones, ``{name: (n, d)}``) and
``"images"`` (decoded pictures, or checked paths for training) all come from a single read and decode of each photo
(:func:`phototag.features.extract_features`); ``"user_tags"`` from the caller. Unreadable photos are part of the
result: their rows are removed from the inputs, ``ok`` marks them and ``failures`` names them, so no method ever
scores (and no command ever tags) a photo that could not be read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backbones import BackboneSpec, resolve_spec
from .features import FeatureStore, ImageItem, extract_features
from .images import DEFAULT_MAX_PIXELS
from .runtime import RunOptions

IMAGE_KEYS = ("features", "backbone_features", "images")


@dataclass
class InputBatch:
    """Inputs of the readable photos, and what became of every photo.

    Attributes:
        inputs: Each declared input, rows of the readable photos only (in input order).
        ok: ``(n_given,)`` bool, True for the photos the inputs hold.
        failures: ``(name, reason)`` for every photo that could not be read, in input order.
    """

    inputs: dict[str, Any]
    ok: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)


def needs_images(data_keys: Sequence[str]) -> bool:
    return any(key in data_keys for key in IMAGE_KEYS)


def feature_specs(method: Any, backbone_spec: BackboneSpec | None) -> dict[str, BackboneSpec]:
    """The backbones a method reads: ``{"features": spec}`` and/or ``{backbone name: spec}`` for
    ``"backbone_features"``."""
    specs: dict[str, BackboneSpec] = {}
    if "features" in method.data_keys:
        if backbone_spec is None:
            raise ValueError(f"Method '{method.name}' reads image features but the model names no backbone.")
        specs["features"] = resolve_spec(backbone_spec)
    if "backbone_features" in method.data_keys:
        for name in method.feature_backbones():
            specs[name] = resolve_spec(name)
    return specs


def make_stores(
    specs: dict[str, BackboneSpec],
    options: RunOptions,
    *,
    memory: bool = True,
    search: Sequence[str | os.PathLike] = (),
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict[str, FeatureStore]:
    """One :class:`FeatureStore` per entry of ``specs`` (same cache, run options and graph folders)."""
    cache = False if not memory else options.cache_dir
    return {
        key: FeatureStore(spec, cache, memory=memory, options=options, search=search, max_pixels=max_pixels)
        for key, spec in specs.items()
    }


def build_inputs(
    method: Any,
    items: Sequence[str | os.PathLike | ImageItem],
    *,
    backbone_spec: BackboneSpec | None = None,
    user_tags: Sequence[Sequence[str]] | None = None,
    options: RunOptions | None = None,
    stores: dict[str, FeatureStore] | None = None,
    images_as: str = "pictures",
    search: Sequence[str | os.PathLike] = (),
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    desc: str = "features",
) -> InputBatch:
    """The inputs ``method`` declares for ``items``, with unreadable photos removed and reported.

    Args:
        method: A :class:`~phototag.methods.TaggingMethod` (its ``data_keys`` and ``feature_backbones()``).
        items: Photo paths or :class:`~phototag.features.ImageItem` (uploads); for methods that read no photo, only
            their count matters.
        backbone_spec: The model's backbone (methods declaring ``"features"``).
        user_tags: The user's own tags per photo (methods declaring ``"user_tags"``).
        options: Run options (cache, workers, batch size, device, progress).
        stores: Ready feature stores by input key (see :func:`feature_specs`); default: built from ``options``.
        images_as: For ``"images"``: ``"pictures"`` (decoded PIL images) or ``"paths"`` (paths of the photos that
            decoded, for training loops that stream from disk).
        search: Folders holding the model's own backbone graphs.
        max_pixels: Decompression-bomb guard.
        desc: Label of the progress bar.
    """
    options = options or RunOptions()
    keys = method.data_keys
    n = len(items)
    inputs: dict[str, Any] = {}
    ok = np.ones(n, dtype=bool)
    failures: list[tuple[str, str]] = []
    if needs_images(keys):
        if stores is None:
            stores = make_stores(feature_specs(method, backbone_spec), options, search=search, max_pixels=max_pixels)
        extraction = extract_features(
            items,
            list(stores.values()),
            options=options,
            keep_images="images" in keys and images_as == "pictures",
            desc=desc,
        )
        ok = extraction.ok
        failures = extraction.failures
        if "features" in keys:
            inputs["features"] = extraction.features[stores["features"].key][ok]
        if "backbone_features" in keys:
            inputs["backbone_features"] = {
                name: extraction.features[stores[name].key][ok] for name in method.feature_backbones()
            }
        if "images" in keys:
            if images_as == "pictures":
                inputs["images"] = [im for im, good in zip(extraction.images, ok, strict=True) if good]
            else:
                inputs["images"] = [ImageItem.of(it).name for it, good in zip(items, ok, strict=True) if good]
    if "user_tags" in keys and user_tags is not None:
        if len(user_tags) != n:
            raise ValueError(f"Got user tags for {len(user_tags)} images but {n} images.")
        inputs["user_tags"] = [list(tags) for tags, good in zip(user_tags, ok, strict=True) if good]
    return InputBatch(inputs, ok, failures)

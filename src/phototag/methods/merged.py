"""``merged``: several taggers over one merged vocabulary.

Each part is a whole tagging method (an ``ensemble`` of heads trained on Corel5k, the backbones' own ``imagenet``
classifiers folded into everyday keywords, ...) that scores its own tags; the merged model scores the union of their
vocabularies, and a tag that several parts know takes the largest of their scores (``rule="max"``) or their mean.
Parts should give calibrated probabilities, so that one threshold means the same whichever part a tag comes from.

:func:`merge_models` builds one from fitted models with different vocabularies (how the shipped default model is
made); ``fit`` trains every part on the same targets (the conformance suite's case). Scoring is numpy when every
part's is, and the input layer decodes each photo once for all parts (``backbone_features``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import TaggingMethod, create_method, register_method

RULES = ("max", "mean")


@dataclass
class MergedConfig:
    # the parts: [{"method": name, "config": {...}}, ...]; each scores its own tags
    parts: list[dict[str, Any]] = field(default_factory=list)
    rule: str = "max"  # a tag several parts know: "max" (the most confident part) or "mean" of their scores


@register_method("merged")
class MergedTagger(TaggingMethod):
    """Several taggers' vocabularies in one model; shared tags take the max (or mean) of the parts' scores."""

    description = "several fitted taggers over one merged vocabulary (e.g. Corel5k heads + ImageNet keywords)"
    Config = MergedConfig
    data_keys = ("backbone_features",)

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        if self.config.rule not in RULES:
            raise ValueError(f"merged rule must be one of {RULES}. Got {self.config.rule!r} instead.")
        if not self.config.parts:
            raise ValueError("A merged model needs at least one part ({'method': name, 'config': {...}}).")
        self._parts = [self._new_part(part) for part in self.config.parts]
        keys: list[str] = []
        for part in self._parts:
            if "features" in part.data_keys:
                raise ValueError(
                    f"merged part '{part.name}' reads one backbone's 'features'; use parts that name their backbones "
                    "(ensemble, imagenet)."
                )
            keys += [k for k in part.data_keys if k not in keys]
        self.data_keys = tuple(keys)

    @staticmethod
    def _new_part(part: Mapping[str, Any]) -> TaggingMethod:
        if not isinstance(part, Mapping) or "method" not in part:
            raise ValueError(f"Each merged part is {{'method': name, 'config': {{...}}}}. Got {part!r} instead.")
        return create_method(part["method"], part.get("config"))

    def feature_backbones(self) -> list[str]:
        names: list[str] = []
        for part in self._parts:
            names += [b for b in part.feature_backbones() if b not in names]
        return names

    # --- building ----------------------------------------------------------------------------------------------------
    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        """Fit every part on the same targets (all parts then know the whole vocabulary)."""
        y = self.check_targets(targets, self.check_inputs(inputs))
        for part in self._parts:
            part.fit(
                self._part_inputs(part, inputs),
                y,
                val_inputs=None if val_inputs is None else self._part_inputs(part, val_inputs),
                val_targets=val_targets,
                progress=progress,
                tag_names=tag_names,
            )
        self.parts_ = self._parts
        self.columns_ = [np.arange(y.shape[1]) for _ in self._parts]
        self.n_tags_ = y.shape[1]
        return self

    @classmethod
    def from_parts(
        cls, parts: Sequence[tuple[TaggingMethod, Sequence[str]]], *, rule: str = "max"
    ) -> tuple[MergedTagger, list[str]]:
        """A merged tagger of fitted methods with their own vocabularies; returns it and the merged tag list (the
        first part's tags in its order, then each later part's new tags)."""
        tags: list[str] = []
        index: dict[str, int] = {}
        columns = []
        for method, names in parts:
            method.check_fitted()
            if len(names) != method.n_tags_:
                raise ValueError(f"Part '{method.name}' scores {method.n_tags_} tags but got {len(names)} tag names.")
            for tag in names:
                if tag not in index:
                    index[tag] = len(tags)
                    tags.append(tag)
            columns.append(np.array([index[t] for t in names], dtype=np.int64))
        config = {"parts": [{"method": m.name, "config": m.config_dict()} for m, _ in parts], "rule": rule}
        merged = cls(config)
        merged._parts = [m for m, _ in parts]
        merged.parts_ = merged._parts
        merged.columns_ = columns
        merged.n_tags_ = len(tags)
        return merged, tags

    # --- scoring -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _part_inputs(part: TaggingMethod, inputs: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: inputs[k] for k in part.data_keys if k in inputs}
        if "backbone_features" in out:
            out["backbone_features"] = {b: inputs["backbone_features"][b] for b in part.feature_backbones()}
        return out

    def part_scores(self, inputs: Mapping[str, Any]) -> list[np.ndarray]:
        """Each part's scores of its own tags ``(n_images, n_part_tags)``; :attr:`columns_` places them."""
        self.check_fitted()
        return [part.score(self._part_inputs(part, inputs)) for part in self.parts_]

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        self.check_inputs(inputs)
        return self.merge_scores(self.part_scores(inputs))

    def merge_scores(self, part_scores: Sequence[np.ndarray]) -> np.ndarray:
        """The merged scores ``(n_images, n_tags)`` of the parts' own scores (as :meth:`part_scores` gives them)."""
        mean = self.config.rule == "mean"
        start = 0.0 if mean else -np.inf  # every tag belongs to at least one part, so no -inf is left for "max"
        out = np.full((len(part_scores[0]), self.n_tags_), start, dtype=np.float32)
        count = np.zeros(self.n_tags_, dtype=np.float32)
        for scores, cols in zip(part_scores, self.columns_, strict=True):
            if mean:
                out[:, cols] += scores
                count[cols] += 1
            else:
                out[:, cols] = np.maximum(out[:, cols], scores)
        return out / np.maximum(count, 1) if mean else out

    def fit_offsets(
        self, targets: np.ndarray, scores: np.ndarray, tags: np.ndarray, *, k: int, power: float, strength: float = 1.0
    ) -> np.ndarray:
        """Balancing offsets of the merged model itself, fitted on merged scores ``(n, n_tags)`` of photos no part
        was trained on (out-of-fold scores) with their ``targets`` ``(n, n_tags)``, for the columns ``tags`` that
        have labels (the others get 0): a part's own offsets do not fit the merged scores, where a tag that several
        parts know takes the largest of their scores (:func:`phototag.calibration.tag_balance_offsets`)."""
        from ..calibration import tag_balance_offsets

        tags = np.asarray(tags, dtype=np.int64)
        offsets = np.zeros(self.n_tags_, dtype=np.float32)
        offsets[tags] = tag_balance_offsets(
            np.asarray(targets)[:, tags], scores[:, tags], k=k, power=power, strength=strength
        )
        self.offsets_ = offsets
        return offsets

    def rank_offset(self) -> np.ndarray | None:
        """The merged model's own balancing offsets (:meth:`fit_offsets`) when fitted; else the parts' offsets in the
        merged columns (0 for tags of parts without any), or ``None``."""
        own = getattr(self, "offsets_", None)
        if own is not None:
            return own
        offsets = [(part.rank_offset(), cols) for part, cols in zip(self.parts_, self.columns_, strict=True)]
        if all(o is None for o, _ in offsets):
            return None
        # Start below every offset: a frequent tag's negative offset must survive (starting at 0 clipped them all,
        # and balanced decisions then favoured the frequent tags they exist to hold back).
        merged = np.full(self.n_tags_, -np.inf, dtype=np.float32)
        for offset, cols in offsets:
            if offset is not None:
                merged[cols] = np.maximum(merged[cols], offset)
        merged[np.isneginf(merged)] = 0.0
        return merged

    # --- state -------------------------------------------------------------------------------------------------------
    def get_state(self):
        arrays: dict[str, np.ndarray] = {}
        meta = []
        for i, (part, cols) in enumerate(zip(self.parts_, self.columns_, strict=True)):
            part_arrays, part_meta = part.get_state()
            arrays.update({f"part{i}/{k}": v for k, v in part_arrays.items()})
            arrays[f"columns/{i}"] = np.asarray(cols, dtype=np.int64)
            meta.append({"method": part.name, "config": part.config_dict(), "meta": part_meta})
        if getattr(self, "offsets_", None) is not None:
            arrays["offsets"] = np.asarray(self.offsets_, dtype=np.float32)
        return arrays, {"n_tags": int(self.n_tags_), "parts": meta}

    def set_state(self, arrays, meta):
        self.n_tags_ = int(meta["n_tags"])
        self.parts_, self.columns_ = [], []
        for i, info in enumerate(meta["parts"]):
            part = create_method(info["method"], info["config"])
            prefix = f"part{i}/"
            part.set_state({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}, info["meta"])
            cols = np.asarray(arrays[f"columns/{i}"], dtype=np.int64)
            if len(cols) != part.n_tags_ or (len(cols) and (cols.min() < 0 or cols.max() >= self.n_tags_)):
                raise ValueError(
                    f"merged part {i} ('{info['method']}'): its column map does not fit {self.n_tags_} tags."
                )
            self.parts_.append(part)
            self.columns_.append(cols)
        self._parts = self.parts_
        self.offsets_ = np.asarray(arrays["offsets"], dtype=np.float32) if "offsets" in arrays else None

"""Shared helpers of the refinement methods: user-tag strings → 0/1 matrix in the vocabulary's column order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..vocab import normalize_tag


def tag_index(tag_names: Sequence[str]) -> dict[str, int]:
    """``{normalised tag: column}`` of a vocabulary (tag names are already normalised; this makes lookups robust)."""
    return {normalize_tag(name): j for j, name in enumerate(tag_names)}


def user_tag_matrix(user_tags: Sequence[Sequence[str]], index: dict[str, int], n_tags: int) -> np.ndarray:
    """0/1 matrix ``(n_images, n_tags)`` float32 of each image's user tags that are in ``index``.

    User tags outside the vocabulary cannot be scored by any method; they are ignored here (the refinement
    pipeline counts them and passes them through unchanged, see :mod:`phototag.refinement`).
    """
    matrix = np.zeros((len(user_tags), n_tags), dtype=np.float32)
    for i, tags in enumerate(user_tags):
        if isinstance(tags, str):
            raise ValueError(
                f"user_tags of image {i} must be a list of tags. Got the string {tags!r} instead (split it first)."
            )
        for tag in tags:
            column = index.get(normalize_tag(tag))
            if column is not None:
                matrix[i, column] = 1.0
    return matrix

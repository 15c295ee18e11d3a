"""Backbone preprocessing with PIL and numpy only: a decoded photo → the normalised ``(3, S, S)`` array a backbone
reads, following its resolved :class:`~phototag.backbones.BackboneSpec`.

It reproduces torchvision's transforms on PIL images step for step (``Resize`` of the shorter side, ``CenterCrop``,
``ToTensor``, ``Normalize``; the letterbox and squash modes likewise), so features match those of the training-time
torch pipeline while tagging needs no torch. :func:`draft_scale` says how far a JPEG may be reduced while it is
decoded (PIL's ``draft``: DCT scaling, several times faster than a full decode) so that it still covers every
backbone's input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from .backbones import BackboneSpec

#: Interpolation names of timm / torchvision → PIL resampling filters.
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def _resample(spec: BackboneSpec) -> Image.Resampling:
    name = spec.interpolation or "bicubic"
    try:
        return _RESAMPLE[name]
    except KeyError:
        raise ValueError(
            f"Unknown interpolation {name!r} in backbone spec; expected one of {sorted(_RESAMPLE)}."
        ) from None


def _check_resolved(spec: BackboneSpec) -> int:
    if spec.input_size is None or spec.mean is None or spec.std is None:
        raise ValueError(
            f"Backbone spec '{spec.name}' is not resolved (input size, mean and std unknown); resolve it with "
            "phototag.backbones.resolve_spec()."
        )
    return int(spec.input_size)


def crop_resize_side(spec: BackboneSpec) -> int:
    """Length of the shorter side before the centre crop (timm: ``input_size / crop_pct``)."""
    return int(round(_check_resolved(spec) / (spec.crop_pct or 0.875)))


def required_scale(spec: BackboneSpec, width: int, height: int) -> float:
    """The smallest scale of a ``width`` × ``height`` photo from which ``spec``'s preprocessing loses nothing."""
    size = _check_resolved(spec)
    if spec.resize_mode == "crop":
        return crop_resize_side(spec) / min(width, height)
    if spec.resize_mode == "full":
        return size / min(width, height)
    if spec.resize_mode == "letterbox":
        return size / max(width, height)
    return max(size / width, size / height)


def draft_scale(specs: Sequence[BackboneSpec], width: int, height: int) -> float:
    """The scale to which a photo may be reduced while decoding so that it still covers every spec's input."""
    return max(required_scale(spec, width, height) for spec in specs)


def draft_request(specs: Sequence[BackboneSpec], width: int, height: int) -> tuple[int, int] | None:
    """The ``(width, height)`` to pass to PIL's ``Image.draft`` (which keeps at least that size), or ``None`` when the
    photo is not at least twice as large as needed (no reduction to gain)."""
    scale = draft_scale(specs, width, height)
    if scale > 0.5:
        return None
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def _resize_shorter(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    # torchvision.transforms.functional.resize with an int size: the shorter side becomes `size`, the longer
    # int(size * long / short), exactly as torchvision computes it.
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return image.resize((new_w, new_h), resample)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if width < size or height < size:  # torchvision pads with zeros when the crop is larger than the image
        canvas = Image.new("RGB", (max(width, size), max(height, size)), (0, 0, 0))
        canvas.paste(image, ((max(width, size) - width) // 2, (max(height, size) - height) // 2))
        image, width, height = canvas, canvas.size[0], canvas.size[1]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _letterbox(image: Image.Image, size: int, mean: Sequence[float], resample: Image.Resampling) -> Image.Image:
    width, height = image.size
    scale = size / max(width, height)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = image.resize((new_w, new_h), resample)
    canvas = Image.new("RGB", (size, size), tuple(int(round(255 * m)) for m in mean))
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def full_size(spec: BackboneSpec, width: int, height: int) -> tuple[int, int]:
    """The network input ``(width, height)`` of a ``width`` × ``height`` photo in ``resize_mode="full"``: the shorter
    side becomes the input size, the longer one keeps the proportion, rounded to a multiple of
    :data:`~phototag.backbone_spec.FULL_STEP` and capped at :data:`~phototag.backbone_spec.FULL_MAX_ASPECT` times the
    shorter (the photo's ends are cropped beyond that).

    Example:
        >>> from phototag.backbones import resolve_spec
        >>> spec = resolve_spec("efficientnet_lite1+full")
        >>> full_size(spec, 192, 128), full_size(spec, 3000, 4000), full_size(spec, 6000, 1000)
        ((360, 240), (240, 320), (480, 240))
    """
    from .backbone_spec import FULL_MAX_ASPECT, FULL_STEP

    size = _check_resolved(spec)
    short, long = min(width, height), max(width, height)
    steps = round(min(long / short, FULL_MAX_ASPECT) * size / FULL_STEP)
    long_side = max(size, FULL_STEP * steps)
    return (long_side, size) if width >= height else (size, long_side)


def _resize_full(spec: BackboneSpec, image: Image.Image, resample: Image.Resampling) -> Image.Image:
    width, height = image.size
    target_w, target_h = full_size(spec, width, height)
    # Crop the photo to the target's proportion first (only a panorama beyond the cap, or a few pixels of rounding).
    scale = max(target_w / width, target_h / height)
    crop_w, crop_h = min(width, round(target_w / scale)), min(height, round(target_h / scale))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h)).resize((target_w, target_h), resample)


def resize_for(spec: BackboneSpec, image: Image.Image) -> Image.Image:
    """The RGB photo resized (and cropped or padded) to ``spec``'s input (square, except in ``"full"`` mode, where
    it keeps the photo's proportions: :func:`full_size`), still a PIL image."""
    size = _check_resolved(spec)
    resample = _resample(spec)
    if spec.resize_mode == "crop":
        return _center_crop(_resize_shorter(image, crop_resize_side(spec), resample), size)
    if spec.resize_mode == "full":
        return _resize_full(spec, image, resample)
    if spec.resize_mode == "letterbox":
        return _letterbox(image, size, spec.mean, resample)
    if spec.resize_mode == "squash":
        return image.resize((size, size), resample)
    raise ValueError(f"Unknown resize_mode {spec.resize_mode!r}; expected crop, letterbox, squash or full.")


def normalize(pixels: np.ndarray, spec: BackboneSpec) -> np.ndarray:
    """``(S, S, 3)`` uint8 → ``(3, S, S)`` float32, scaled to [0, 1] then normalised by the spec's mean and std."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    array = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    return (array - mean) / std


def preprocess(spec: BackboneSpec, image: Image.Image) -> np.ndarray:
    """A decoded RGB photo → ``(3, S, S)`` float32 network input for ``spec`` (see the module docstring); ``(3, H,
    W)`` in ``"full"`` mode."""
    return normalize(np.asarray(resize_for(spec, image), dtype=np.uint8), spec)

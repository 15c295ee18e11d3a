"""Uploaded photos: their cleaned names, their size from the header, and a decode reduced to what the model needs."""

from __future__ import annotations

import asyncio
import io
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..images import CorruptImageError, ImageLoadError, ImageTooLargeError, decode_image

if TYPE_CHECKING:
    from ..model import TagModel


@dataclass
class DecodedImage:
    """An upload that decoded: its name and its RGB picture, reduced to what the model needs (see
    :func:`decode_reduced`), so neither the queue nor the model worker holds full-size pixels."""

    name: str
    data: bytes  # the encoded upload; the service leaves it empty once decoded (the model reads ``image``)
    image: Any  # PIL.Image.Image in RGB
    user_tags: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)  # width, height of the uploaded photo (before any reduction)


def clean_upload_name(name: str | None, *, limit: int = 200) -> str:
    """The name an upload is reported under: no folders, no control characters, at most ``limit`` characters.

    A long extension is dropped rather than cut (``photo.<300 x>`` becomes ``photo``), so a name can never make a
    file name or path the server cannot write.
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    stem, dot, suffix = base.rpartition(".")
    if dot and (len(suffix) > 10 or not suffix.isalnum()):
        base = stem
    if len(base) > limit:
        stem, dot, suffix = base.rpartition(".")
        base = f"{stem[: limit - len(suffix) - 1]}.{suffix}" if dot and stem else base[:limit]
    return base or "upload"


def image_size(data: bytes, source: str) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding the pixels.

    Raises:
        ImageLoadError: Empty, or not an image PIL can read (:class:`CorruptImageError`: cut short or corrupt;
            :class:`ImageTooLargeError`: a possible decompression bomb).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageLoadError(source, "file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except UnidentifiedImageError:
        raise ImageLoadError(source, "not an image file PIL can read") from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError(source, "refused as a possible decompression bomb") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(source, f"corrupt or truncated image ({err})") from None


def decode_reduced(
    data: bytes,
    *,
    source: str,
    max_pixels: int,
    side: int,
    draft: Callable[[int, int], tuple[int, int] | None] | None = None,
):
    """Decode an upload to an RGB picture no larger than the model needs; the full-size pixels are dropped at once.

    A JPEG is decoded reduced by ``draft`` (the model's rule, ``phototag.preprocess.draft_request``: DCT scaling
    to the smallest size that still covers its backbones' input, exactly as ``phototag predict`` decodes it). A
    picture still larger than ``side`` on its shorter side (other formats, or a model without backbones) is then
    reduced to ``side`` (Lanczos), so the queue never holds full-size photos.

    Raises:
        ImageLoadError: Not an image, truncated, over ``max_pixels`` (:class:`ImageTooLargeError`) or otherwise
            undecodable.
    """
    from PIL import Image

    width, height = image_size(data, source)
    if width * height > max_pixels:
        raise ImageTooLargeError(
            source, f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
        )
    image = decode_image(data, source=source, max_pixels=max_pixels, draft=draft)
    short = min(image.size)
    if short > side:
        factor = short / side
        size = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def draft_rule(model: TagModel) -> Callable[[int, int], tuple[int, int] | None] | None:
    """How far ``model`` lets a JPEG be reduced while decoding (its backbones' rule, as ``predict`` uses); ``None``
    for a model that reads no backbone features."""
    from ..inputs import feature_specs
    from ..preprocess import draft_request

    try:
        specs = list(feature_specs(model.method, model.backbone_spec).values())
    except ValueError:
        return None
    if not specs:
        return None
    return lambda width, height: draft_request(specs, width, height)


class PixelBudget:
    """How many pixels may be decoded at once, shared by all requests (the decoder's memory budget).

    ``acquire(n)`` waits until ``n`` more pixels fit; an image larger than the whole budget waits until nothing
    else is being decoded, so it still runs, alone.
    """

    def __init__(self, pixels: int):
        self.pixels = pixels
        self.used = 0
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self, n: int) -> None:
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: self.used == 0 or self.used + n <= self.pixels)
            self.used += n

    async def release(self, n: int) -> None:
        changed = self._condition()
        async with changed:
            self.used -= n
            changed.notify_all()

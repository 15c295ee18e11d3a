"""Finding and safely decoding image files.

Every image phototag reads goes through :func:`load_image`, so the same rules hold everywhere: EXIF orientation is
applied, odd modes (palette, CMYK, 16-bit grey, alpha) become RGB, truncated files are an error rather than a
half-grey picture, and decompression bombs are refused before they are decoded.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

#: File name endings treated as images when a folder is searched.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

#: Default pixel limit (width × height). 100 megapixels is larger than any camera photo, far smaller than a bomb.
DEFAULT_MAX_PIXELS = 100_000_000


class ImageLoadError(Exception):
    """An image could not be read. ``path`` names the file, ``reason`` says why in one line."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a list of image files.

    A folder is searched recursively for files whose name ends in one of :data:`IMAGE_EXTENSIONS` (sorted, so the
    order is reproducible). A file named explicitly is kept whatever its extension: if it is not an image, reading
    it later reports that by path.

    Args:
        paths: Files and/or folders.

    Returns:
        Image paths, folders expanded, duplicates removed, in the order given.

    Raises:
        FileNotFoundError: A path does not exist.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            children = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.exists():
            children = [path]
        else:
            raise FileNotFoundError(f"No such file or folder: '{path}'. Give image files or folders of images.")
        for child in children:
            key = child.resolve()
            if key not in seen:
                seen.add(key)
                found.append(child)
    return found


def decode_image(
    data: bytes,
    *,
    source: str | os.PathLike = "<bytes>",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft: Callable[[int, int], tuple[int, int] | None] | None = None,
):
    """Decode encoded image bytes into an RGB :class:`PIL.Image.Image`.

    Args:
        data: The encoded file content (JPEG, PNG, ...).
        source: Name used in error messages (usually the file path).
        max_pixels: Refuse images with more pixels than this (decompression-bomb guard); ``None`` = no limit.
        draft: ``(width, height) -> (w, h) or None``: the size a JPEG may be reduced to while decoding (PIL's
            ``draft``, which keeps at least that size; much faster for large photos). ``None`` = full size.

    Raises:
        ImageLoadError: Not an image, truncated, too large or otherwise undecodable.
    """
    if not data:
        raise ImageLoadError(source, "file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageLoadError(
                    source,
                    f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
                    "raise max_pixels if the file is trusted",
                )
            if draft is not None and image.format == "JPEG":
                request = draft(width, height)
                if request is not None:
                    image.draft("RGB", request)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(source, "not an image file PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(source, f"refused as a possible decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        # PIL reports truncated or corrupt data as OSError ("image file is truncated"), SyntaxError or ValueError.
        raise ImageLoadError(source, f"corrupt or truncated image ({err})") from None


def load_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Read and decode one image file into RGB; see :func:`decode_image`.

    Raises:
        ImageLoadError: The file is missing, unreadable or not a valid image.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except OSError as err:
        raise ImageLoadError(path, f"cannot read file ({err.strerror or err})") from None
    return decode_image(data, source=path, max_pixels=max_pixels)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white: transparent regions of logos/PNGs would otherwise turn black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        return Image.fromarray((array / top * 255).astype("uint8")).convert("RGB")
    return image.convert("RGB")


def describe_failures(failures: Sequence[tuple[str, str]], *, limit: int = 10) -> str:
    """One readable block listing failed images (path: reason), at most ``limit`` of them, with the total."""
    lines = [f"{len(failures)} image(s) could not be read:"]
    lines += [f"  {path}: {reason}" for path, reason in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more")
    return "\n".join(lines)

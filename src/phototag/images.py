"""Finding and safely decoding image files.

Every image phototag reads goes through :func:`load_image`, so the same rules hold everywhere: EXIF orientation is
applied, odd modes (palette, CMYK, 16-bit grey, alpha) become RGB, truncated files are an error rather than a
half-grey picture, and decompression bombs are refused before they are decoded.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import PhototagError

log = logging.getLogger(__name__)

#: HEIF-family photos (phones since 2017): HEIC/HEIF via pillow-heif, AVIF via Pillow's own plugin.
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".avif"})
#: Camera raw files, read through rawpy (LibRaw): the camera's embedded JPEG preview, else a half-size develop.
RAW_EXTENSIONS = frozenset(
    {".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".iiq", ".kdc", ".mos", ".mrw", ".nef", ".nrw"}
    | {".orf", ".pef", ".raf", ".raw", ".rw2", ".rwl", ".sr2", ".srf", ".srw", ".x3f"}
)
#: File name endings treated as images when a folder is searched.
IMAGE_EXTENSIONS = (
    frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}) | HEIF_EXTENSIONS | RAW_EXTENSIONS
)
#: What to install for the HEIC and raw readers.
FORMATS_EXTRA_HINT = "pip install 'phototag[formats]'"

#: Default pixel limit (width × height). 100 megapixels is larger than any camera photo, far smaller than a bomb.
DEFAULT_MAX_PIXELS = 100_000_000


class ImageLoadError(PhototagError):
    """An image could not be read. ``path`` names the file, ``reason`` says why in one line.

    The subclasses say what kind of failure it was, so callers (the service's HTTP status, the head-only size check)
    decide by class, never by the wording of ``reason``.
    """

    http_status = 422
    code = "bad_image"

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ImageTooLargeError(ImageLoadError):
    """The picture is over the pixel limit, or PIL refused it as a possible decompression bomb."""

    http_status = 413


class CorruptImageError(ImageLoadError):
    """The file starts like an image but its data is corrupt or cut short."""


def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a list of image files.

    A folder is searched recursively for files whose name ends in one of :data:`IMAGE_EXTENSIONS` (sorted, so the
    order is reproducible); the other files found there (XMP sidecars aside) are named in a logged warning. A file
    named explicitly is kept whatever its extension: if it is not an image, reading it later reports that by path.

    Args:
        paths: Files and/or folders.

    Returns:
        Image paths, folders expanded, duplicates removed, in the order given.

    Raises:
        FileNotFoundError: A path does not exist.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    skipped: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            children = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
            skipped += [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS and p.suffix.lower() != ".xmp"]
        elif path.exists():
            children = [path]
        else:
            raise FileNotFoundError(f"No such file or folder: '{path}'. Give image files or folders of images.")
        for child in children:
            key = child.resolve()
            if key not in seen:
                seen.add(key)
                found.append(child)
    if skipped:  # never silently: say what was left out (XMP sidecars are the photos' companions, not skipped)
        shown = ", ".join(str(p) for p in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.warning("%d file(s) in the folders are not photos phototag reads and were skipped: %s", len(skipped), shown)
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
    special = decode_special(data, source)
    if special is not None:
        width, height = special.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(source, f"image is {width}x{height}, over the limit of {max_pixels:,} pixels")
        return _to_rgb(special)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
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
        raise ImageTooLargeError(source, f"refused as a possible decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        # PIL reports truncated or corrupt data as OSError ("image file is truncated"), SyntaxError or ValueError.
        raise CorruptImageError(source, f"corrupt or truncated image ({err})") from None


def _is_heif(data: bytes) -> bool:
    """An ISO base media file whose brand is HEIC / HEIF (``ftyp`` box at byte 4)."""
    return data[4:8] == b"ftyp" and data[8:12] in {
        b"heic",
        b"heix",
        b"heim",
        b"heis",
        b"hevc",
        b"hevx",
        b"mif1",
        b"msf1",
    }


def _is_raw(data: bytes, source: str | os.PathLike) -> bool:
    if Path(str(source)).suffix.lower() in RAW_EXTENSIONS:
        return True
    head = data[:16]
    return (
        head.startswith(b"FUJIFILMCCD-RAW")
        or (head[4:8] == b"ftyp" and head[8:12] == b"crx ")  # Canon CR3
        or head[:4] in {b"IIRO", b"IIRS", b"MMOR", b"IIU\x00"}  # Olympus ORF, Panasonic RW2
        or (head[:4] == b"II*\x00" and head[8:10] == b"CR")  # Canon CR2
    )


def decode_special(data: bytes, source: str | os.PathLike = "<bytes>"):
    """Formats Pillow does not open by itself: HEIC/HEIF (pillow-heif) and camera raw files (rawpy).

    Returns:
        A decoded :class:`PIL.Image.Image` for raw files; ``None`` for everything else, after making sure Pillow
        can open a HEIC (its opener is registered on first use).

    Raises:
        ImageLoadError: A HEIC or raw file while the reader for it is not installed, or a raw file LibRaw cannot read.
    """
    if _is_heif(data):
        try:
            import pillow_heif
        except ImportError:
            raise ImageLoadError(source, f"HEIC/HEIF photos need pillow-heif: {FORMATS_EXTRA_HINT}") from None
        pillow_heif.register_heif_opener()
        return None
    if not _is_raw(data, source):
        return None
    try:
        import rawpy
    except ImportError:
        raise ImageLoadError(source, f"camera raw files need rawpy: {FORMATS_EXTRA_HINT}") from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            try:
                thumb = raw.extract_thumb()
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                thumb = None
            oriented = False
            if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
                preview = Image.open(io.BytesIO(thumb.data))
                oriented = preview.getexif().get(0x0112, 1) != 1
                image = ImageOps.exif_transpose(preview)
            elif thumb is not None:
                image = Image.fromarray(thumb.data)
            else:  # no preview: develop at half size (postprocess applies the orientation itself)
                image = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
                oriented = True
            if not oriented:  # LibRaw's orientation: 3 = 180°, 5 = 90° counter-clockwise, 6 = 90° clockwise
                turn = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}
                image = image.transpose(turn[raw.sizes.flip]) if raw.sizes.flip in turn else image
            image.load()
            return image
    except ImageLoadError:
        raise
    except Exception as err:  # LibRaw raises its own error classes for every kind of bad input
        raise ImageLoadError(source, f"camera raw file LibRaw cannot read ({type(err).__name__}: {err})") from None


def load_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Read and decode one image file into RGB; see :func:`decode_image`.

    Raises:
        ImageLoadError: The file is missing, unreadable or not a valid image.
    """
    return decode_image(read_image_bytes(path), source=path, max_pixels=max_pixels)


def read_image_bytes(path: str | os.PathLike, *, name: str | os.PathLike | None = None) -> bytes:
    """The bytes of an image file; a missing, folder or unreadable path is an :class:`ImageLoadError` naming
    ``name`` (default: the path)."""
    name = path if name is None else name
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(name, "is a folder, not an image file") from None
    except OSError as err:
        raise ImageLoadError(name, f"cannot read file ({err.strerror or err})") from None


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

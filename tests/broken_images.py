"""Generated broken images of every kind the abuse probe used, for the service and CLI tests."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def jpeg(size: tuple[int, int] = (320, 240), seed: int = 0, quality: int = 90) -> bytes:
    """A real photo-like JPEG (smooth colours plus noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    base = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def png(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and holds no pixel data (a 'huge dimensions' bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def jpeg_with_dimensions(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header is patched to claim ``width`` x ``height``."""
    data = bytearray(jpeg((32, 32)))
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def broken_uploads() -> dict[str, tuple[bytes, str, int]]:
    """name -> (bytes, content type, HTTP status its entry gets). Every kind from the abuse probe, and a few more."""
    good = jpeg()
    good_png = png((300, 200))
    return {
        "empty.jpg": (b"", "image/jpeg", 422),
        "truncated.jpg": (good[: len(good) // 3], "image/jpeg", 422),
        "truncated.png": (good_png[: len(good_png) // 2], "image/png", 422),
        "random.jpg": (np.random.default_rng(1).bytes(5000), "image/jpeg", 422),
        "drawing.jpg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "image/jpeg", 422),
        "header-only.png": (png_header_only(64, 64), "image/png", 422),
        "huge.png": (png_header_only(100_000, 100_000), "image/png", 413),
        "huge.jpg": (jpeg_with_dimensions(60_000, 60_000), "image/jpeg", 413),
        "notes.txt": (b"hello", "text/plain", 415),
        "html.png": (b"<html><body>hi</body></html>", "image/png", 422),
    }

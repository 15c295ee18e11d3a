"""The numpy preprocessing reproduces the torchvision pipeline, and draft decoding keeps what every backbone needs."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from phototag.backbones import resolve_spec
from phototag.images import decode_image
from phototag.preprocess import draft_request, preprocess, required_scale


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["crop", "letterbox", "squash"])
@pytest.mark.parametrize("size", [(192, 128), (128, 192), (300, 300), (97, 61)])
def test_matches_torchvision_transform(mode, size):
    pytest.importorskip("torchvision")
    from phototag.backbones import build_transform

    spec = dataclasses.replace(resolve_spec("efficientnet_lite1"), resize_mode=mode)
    image = _photo(*size)
    expected = build_transform(spec)(image).numpy()
    np.testing.assert_allclose(preprocess(spec, image), expected, atol=1e-6)


def test_offline_specs_resolve_like_timm():
    pytest.importorskip("timm")
    from phototag.backbones import create_backbone

    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert resolve_spec(name) == create_backbone(name).spec


def test_draft_request_covers_every_backbone():
    specs = [resolve_spec(f"efficientnet_lite{i}") for i in range(3)]
    # A 12 MP photo only needs about 300 px on its shorter side for the largest backbone (260 / 0.89 = 292).
    request = draft_request(specs, 4000, 3000)
    assert request is not None and min(request) >= 292 and min(request) < 600
    assert draft_request(specs, 192, 128) is None  # small photos are decoded at full size
    assert required_scale(dataclasses.replace(specs[0], resize_mode="letterbox"), 4000, 3000) == pytest.approx(
        224 / 4000
    )


def test_draft_decode_is_small_and_close_to_full_decode():
    specs = [resolve_spec(f"efficientnet_lite{i}") for i in range(3)]
    buffer = io.BytesIO()
    _photo(2400, 1600, seed=3).save(buffer, "JPEG", quality=92)
    data = buffer.getvalue()
    full = decode_image(data)
    small = decode_image(data, draft=lambda w, h: draft_request(specs, w, h))
    assert full.size == (2400, 1600)
    assert small.size[1] >= 292 and small.size[1] <= 800  # reduced while decoding, still covering the inputs
    a, b = preprocess(specs[2], full), preprocess(specs[2], small)
    assert np.abs(a - b).mean() < 0.05  # the same picture: mean difference well under 1 % of the range [-1, 1]
    # PNG has no draft mode: decoded at full size.
    png = io.BytesIO()
    _photo(600, 400).save(png, "PNG")
    assert decode_image(png.getvalue(), draft=lambda w, h: draft_request(specs, w, h)).size == (600, 400)

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


@pytest.mark.parametrize("mode", ["crop", "letterbox", "squash", "full"])
@pytest.mark.parametrize("size", [(192, 128), (128, 192), (300, 300), (97, 61), (900, 200)])
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


def test_whole_photo_mode_keeps_the_proportions():
    """``+full``: the shorter side becomes the input size and the longer keeps the proportion (to 8 pixels, at most
    twice the shorter: a panorama loses its ends); the name round-trips; decoding keeps enough pixels."""
    from phototag.backbone_spec import as_spec, backbone_label, parse_backbone_name, reads_full_photo

    spec = resolve_spec("efficientnet_lite2+full")
    assert spec.resize_mode == "full" and backbone_label(spec) == "efficientnet_lite2+full"
    assert spec.cache_key() != resolve_spec("efficientnet_lite2").cache_key()
    staged = as_spec("efficientnet_lite1+s16+full")
    assert backbone_label(staged) == "efficientnet_lite1+s16+full" and reads_full_photo("efficientnet_lite1+s16+full")
    assert parse_backbone_name("efficientnet_lite1+full+s16") == ("efficientnet_lite1", [16])
    assert preprocess(spec, _photo(192, 128)).shape == (3, 260, 392)  # 390 rounded to a multiple of 8
    assert preprocess(spec, _photo(128, 192)).shape == (3, 392, 260)
    assert preprocess(spec, _photo(2000, 200)).shape == (3, 260, 520)  # 10:1 capped at 2:1
    assert preprocess(spec, _photo(500, 500)).shape == (3, 260, 260)
    panorama = _photo(2000, 200)
    middle = panorama.crop((500, 0, 1500, 200))  # the centre 2:1 of the 10:1 photo
    np.testing.assert_allclose(preprocess(spec, panorama), preprocess(spec, middle), atol=1e-6)
    assert required_scale(spec, 4000, 3000) == pytest.approx(260 / 3000)

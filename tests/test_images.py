from __future__ import annotations

import io

import pytest
from PIL import Image

from phototag.errors import PhototagError
from phototag.images import (
    CorruptImageError,
    ImageLoadError,
    ImageTooLargeError,
    decode_image,
    describe_failures,
    find_images,
    load_image,
)


def _png(mode: str = "RGB", size=(8, 6), color=0) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_find_images_recurses_sorted_and_dedupes(tmp_path, caplog):
    (tmp_path / "b").mkdir()
    for name in ("b/2.jpg", "a.PNG", "b/1.jpeg", "notes.txt", "b/3.HEIC", "b/4.cr3", "b/2.jpg.xmp"):
        (tmp_path / name).write_bytes(b"x")
    found = find_images([tmp_path, tmp_path / "a.PNG"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.PNG",
        "b/1.jpeg",
        "b/2.jpg",
        "b/3.HEIC",
        "b/4.cr3",
    ]
    # nothing skipped silently: the file that is not a photo is named (the sidecar is a photo's companion)
    assert "1 file(s)" in caplog.text and "notes.txt" in caplog.text and "2.jpg.xmp" not in caplog.text


def test_heic_and_raw_decode(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pytest.importorskip("rawpy")
    pytest.importorskip("tifffile")
    from library_builder import write_dng

    original = Image.effect_noise((64, 48), 40).convert("RGB")
    pillow_heif.register_heif_opener()
    original.save(tmp_path / "phone.heic", quality=95)
    write_dng(tmp_path / "camera.dng", original)
    for name in ("phone.heic", "camera.dng"):
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (64, 48), name
    # the DNG's preview is the image itself: pixel for pixel
    assert load_image(tmp_path / "camera.dng").tobytes() == original.tobytes()
    (tmp_path / "fake.nef").write_bytes(_jpeg())
    with pytest.raises(ImageLoadError, match="fake.nef: camera raw file LibRaw cannot read"):
        load_image(tmp_path / "fake.nef")


def test_find_images_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        find_images([tmp_path / "nope"])


@pytest.mark.parametrize(
    "mode,color", [("RGBA", (0, 0, 0, 0)), ("L", 128), ("P", 3), ("CMYK", (0, 0, 0, 0)), ("I;16", 900)]
)
def test_odd_modes_become_rgb(mode, color):
    image = decode_image(_png(mode, color=color) if mode != "CMYK" else _cmyk_jpeg())
    assert image.mode == "RGB" and image.size == (8, 6)


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (8, 6)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_transparent_png_is_composited_on_white():
    assert decode_image(_png("RGBA", color=(0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_truncated_jpeg_is_an_error():
    data = _jpeg()
    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(data[: len(data) // 2], source="half.jpg")


def test_not_an_image(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_text("hello")
    with pytest.raises(ImageLoadError, match=r"fake\.jpg: not an image"):
        load_image(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused_before_decoding():
    data = _png("L", size=(4000, 3000))
    with pytest.raises(ImageTooLargeError, match="over the limit") as refused:
        decode_image(data, max_pixels=1_000_000)
    assert decode_image(data, max_pixels=None).size == (4000, 3000)
    # What the error is decides how it is reported (HTTP status, CLI exit code), never its wording.
    assert isinstance(refused.value, PhototagError) and refused.value.http_status == 413
    assert ImageLoadError("x.jpg", "file is empty").http_status == 422 and refused.value.exit_code == 2


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (10, 20)


def test_describe_failures_counts_and_truncates():
    text = describe_failures([(f"f{i}.jpg", "bad") for i in range(12)], limit=3)
    assert text.startswith("12 image(s) could not be read") and "... and 9 more" in text

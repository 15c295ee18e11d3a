"""Build a real photo library with exiftool: Corel5k photos whose keywords sit where photo apps put them.

Shared by tests/test_library.py and benchmarks/library.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

#: Where a photo's keywords are written: XMP sidecar (digiKam / Lightroom naming), IPTC, embedded XMP, nowhere.
PLACES = ("sidecar", "sidecar_stem", "iptc", "xmp", "none")


def corel5k_photos(corel5k: Path, n: int, *, seed: int = 0) -> list[tuple[Path, list[str]]]:
    """``n`` seeded-random Corel5k photos (of the train and test lists found) with their keywords."""
    from scipy.io import loadmat

    words = [w.strip() for w in (corel5k / "corel5k_words.txt").read_text().splitlines() if w.strip()]
    found = []
    for split, variable in (("train", "annot1"), ("test", "annot2")):
        if not (corel5k / f"corel5k_{split}_list.txt").is_file():
            continue
        ids = [x.strip() for x in (corel5k / f"corel5k_{split}_list.txt").read_text().splitlines() if x.strip()]
        annot = loadmat(corel5k / f"corel5k_{split}_annot.mat")[variable]
        found += [
            (corel5k / f"{i}.jpeg", [words[j] for j in np.flatnonzero(row)]) for i, row in zip(ids, annot, strict=True)
        ]
    order = np.random.default_rng(seed).permutation(len(found))[:n]
    return [found[i] for i in order]


def build_library(
    folder: Path, photos: Sequence[tuple[Path, list[str], str]], *, parent: str = "nature"
) -> dict[Path, list[str]]:
    """Copy ``(source, keywords, place)`` photos into ``folder`` as ``NNNN.jpg`` and write the keywords.

    ``place`` is one of :data:`PLACES`; ``xmp`` writes ``dc:subject`` plus ``lr:hierarchicalSubject``
    (``PARENT|keyword``). Everything is written by one exiftool process.

    Returns:
        Each library photo → its true keywords (also for ``none``).
    """
    from phototag.exiftool import ExifTool

    folder.mkdir(parents=True, exist_ok=True)
    truth: dict[Path, list[str]] = {}
    with ExifTool() as exiftool:
        for i, (source, keywords, place) in enumerate(photos):
            photo = folder / f"{i:04d}.jpg"
            shutil.copyfile(source, photo)
            truth[photo] = list(keywords)
            subject = [f"-XMP-dc:Subject={k}" for k in keywords]
            if place in ("sidecar", "sidecar_stem"):
                target = photo.with_name(photo.name + ".xmp") if place == "sidecar" else photo.with_suffix(".xmp")
                exiftool.execute(["-q", "-o", str(target), *subject, str(photo)])
            elif place == "iptc":
                exiftool.write(photo, ["-charset", "iptc=UTF8", *[f"-IPTC:Keywords={k}" for k in keywords]])
            elif place == "xmp":
                hierarchy = [f"-XMP-lr:HierarchicalSubject={parent}|{k}" for k in keywords]
                exiftool.write(photo, [*subject, *hierarchy])
            elif place != "none":
                raise ValueError(f"place must be one of {PLACES}. Got {place!r} instead.")
    return truth


def write_dng(path: Path, image: Image.Image) -> None:
    """A small linear DNG (raw container LibRaw reads) holding ``image``, with an RGB preview as its first page."""
    import tifffile

    rgb = np.asarray(image.convert("RGB"))
    dng_tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50708, "s", 0, "phototag test camera", True),  # UniqueCameraModel
        (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),  # ColorMatrix1 = identity
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
    ]
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, photometric="rgb", subfiletype=1, subifds=1, extratags=dng_tags)
        tif.write(
            rgb.astype(np.uint16) * 257, photometric=34892, subfiletype=0, extratags=[(50717, "H", 1, 65535, True)]
        )

"""Shared fixtures: real data location, one backbone per session, a synthetic photo set a tagger can learn."""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# ../shared/data beside the repository; $PHOTOTAG_SHARED_DATA points elsewhere (e.g. from a git worktree).
SHARED_DATA = Path(
    os.environ.get("PHOTOTAG_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}
SHAPES = ("circle", "square")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository; tests using it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def corel5k_dir(shared_data: Path) -> Path:
    path = shared_data / "corel5k"
    if not (path / "corel5k_train_list.txt").is_file():
        pytest.skip(f"Corel5k not available at {path}")
    return path


@pytest.fixture(scope="session")
def backbone():
    from phototag.backbones import create_backbone

    return create_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for the whole session, so each image is embedded once."""
    return tmp_path_factory.mktemp("feature-cache")


def draw_photo(color: str, shape: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A synthetic 'photo': a coloured shape on a noisy grey background; the tags follow from the pixels."""
    background = rng.integers(90, 170, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    extent = int(rng.integers(size // 3, size // 2))
    x0, y0 = (int(v) for v in rng.integers(4, size - extent - 4, size=2))
    box = (x0, y0, x0 + extent, y0 + extent)
    fill = tuple(int(np.clip(c + rng.integers(-20, 20), 0, 255)) for c in COLORS[color])
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.rectangle(box, fill=fill)
    return image


@pytest.fixture(scope="session")
def synthetic_photos(tmp_path_factory) -> Path:
    """A folder of 72 synthetic photos + ``photos.csv`` (file,tags,user_tags,split): colour and shape tags.

    48 train, 12 val, 12 test; balanced over the 6 colour × shape combinations.
    """
    root = tmp_path_factory.mktemp("synthetic-photos")
    rng = np.random.default_rng(0)
    rows = []
    combos = [(c, s) for c in COLORS for s in SHAPES]
    for i in range(72):
        color, shape = combos[i % len(combos)]
        split = "train" if i < 48 else ("val" if i < 60 else "test")
        name = f"img/{split}/{i:03d}.jpg" if i % 2 else f"img/{split}/{i:03d}.png"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_photo(color, shape, rng).save(path)
        rows.append({"file": name, "tags": f"{color} {shape}", "user_tags": f"#{color.title()} photo", "split": split})
    with open(root / "photos.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "tags", "user_tags", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_photos: Path, tmp_path_factory):
    """The synthetic photos imported as a phototag dataset directory."""
    from phototag.importers import run_importer

    out = tmp_path_factory.mktemp("synthetic-dataset") / "ds"
    run_importer("csv", synthetic_photos / "photos.csv", out)
    return out


@functools.lru_cache(maxsize=1)
def _default_categories() -> frozenset[str]:
    from phototag.model import load_model

    model = load_model()
    mask = model.decision.categories
    return frozenset() if mask is None else frozenset(t for t, c in zip(model.tags, mask, strict=True) if c)


def default_model_keywords(tags: list) -> list:
    """A default-model answer's keywords: its tags (strings or ``{"tag", "score"}``) without the broad categories
    (animal, vehicle, ...) that follow them; a top-k answer has k keywords and may have more tags. Checks that the
    categories come after the keywords."""
    names = [t["tag"] if isinstance(t, dict) else t for t in tags]
    flags = [name in _default_categories() for name in names]
    assert flags == sorted(flags), f"categories must follow the keywords: {names}"
    return [t for t, flag in zip(tags, flags, strict=True) if not flag]


def clustered_features(n: int = 120, n_tags: int = 4, dim: int = 16, seed: int = 0):
    """Features with learnable multi-label targets: each tag adds its own direction to a noisy vector."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, n_tags)) < 0.4).astype(np.float32)
    targets[targets.sum(axis=1) == 0, 0] = 1
    directions = rng.normal(size=(n_tags, dim)) * 3
    features = targets @ directions + rng.normal(scale=0.5, size=(n, dim))
    return features.astype(np.float32), targets


@pytest.fixture(scope="session")
def real_feature_cache() -> Path:
    """Cache root for the real datasets: the user cache (``$PHOTOTAG_CACHE`` or ~/.cache/phototag), so the
    4,500 Corel5k photos are embedded once per machine, not once per test run."""
    from phototag.features import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="session")
def corel5k_heldout(corel5k_dir: Path, tmp_path_factory):
    """Corel5k's train split imported, with 500 seeded-random photos held out as 'test' (the benchmark's split)."""
    from phototag.importers import run_importer

    work = tmp_path_factory.mktemp("corel5k")
    return run_importer("corel5k", corel5k_dir, work / "imported").carve_test(500, seed=0)


@pytest.fixture(scope="session")
def corel5k_features(corel5k_heldout, backbone, real_feature_cache):
    """``(dataset, features (4500, 1280), targets (4500, n_tags), train rows, test rows)`` with lite0 features."""
    from phototag.features import FeatureStore

    dataset = corel5k_heldout
    paths = [str(dataset.image_path(r)) for r in dataset.records]
    result = FeatureStore(backbone, real_feature_cache).extract(paths, progress=False)
    assert result.ok.all(), result.failures[:5]
    splits = np.array([r.split for r in dataset.records])
    return (
        dataset,
        result.features,
        dataset.target_matrix(),
        np.flatnonzero(splits == "train"),
        np.flatnonzero(splits == "test"),
    )

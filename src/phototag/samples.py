"""Sample photos that installed packages bring along, so tagging can be tried without any data."""

from __future__ import annotations

from pathlib import Path


def example_images() -> list[Path]:
    """Sample photos bundled with installed packages (scikit-image, scikit-learn), so tagging works without data."""
    found: list[Path] = []
    try:
        import skimage.data

        root = Path(skimage.data.__file__).parent
        found += [root / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")]
    except ImportError:
        pass
    try:
        import sklearn.datasets

        root = Path(sklearn.datasets.__file__).parent / "images"
        found += [root / n for n in ("china.jpg", "flower.jpg")]
    except ImportError:
        pass
    return [p for p in found if p.is_file()]

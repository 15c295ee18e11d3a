"""The importer registry: ``phototag import NAME`` looks importers up here by name.

Kept apart from :mod:`phototag.importers` (the built-in importers) so that importers living in other modules
(:mod:`phototag.library`) register themselves without importing the module that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .data import Dataset

Importer = Callable[..., "Dataset"]  # (src: Path, **options) -> Dataset
_IMPORTERS: dict[str, Importer] = {}


def register_importer(name: str) -> Callable[[Importer], Importer]:
    """Decorator registering an importer under ``name``; a name registered twice raises ``ValueError``."""

    def decorate(function: Importer) -> Importer:
        if name in _IMPORTERS:
            raise ValueError(f"An importer named '{name}' is already registered.")
        _IMPORTERS[name] = function
        return function

    return decorate


def list_importers() -> list[str]:
    """The registered importer names, sorted (import :mod:`phototag.importers` first to have the built-in ones)."""
    return sorted(_IMPORTERS)


def get_importer(kind: str) -> Importer:
    """The importer registered as ``kind``.

    Raises:
        ValueError: No importer has that name (the message lists the known ones).
    """
    if kind not in _IMPORTERS:
        raise ValueError(f"Unknown dataset kind '{kind}'. Known kinds: {', '.join(list_importers())}.")
    return _IMPORTERS[kind]

"""Writing a benchmark's results: one JSON file, written atomically (a stopped run never leaves half a file)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phototag.fileio import atomic_write_text


def write_json(path: Path, payload: Any, *, default: Callable[[Any], Any] | None = None, quiet: bool = False) -> None:
    """``payload`` as indented JSON at ``path`` (folders made as needed); prints where it went unless ``quiet``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2, default=default) + "\n")
    if not quiet:
        print(f"wrote {path}")

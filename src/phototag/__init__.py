"""phototag: train, evaluate and serve photo taggers."""

from __future__ import annotations

__version__ = "0.1.0"

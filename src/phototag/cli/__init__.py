"""The ``phototag`` command line: thin commands over the library.

``phototag.cli:main`` is the console entry point; ``main(argv)`` returns the exit code (see
:mod:`phototag.cli.options`: 0 ok, 1 some images unreadable, 2 bad input, 3 a bug), so tests call it directly.
"""

from __future__ import annotations

from ..samples import example_images
from .main import build_parser, main

__all__ = ["build_parser", "example_images", "main"]

"""Batch prediction input: a CSV of images and the user's own tags (``phototag predict MODEL --input photos.csv``).

Columns (header required): ``file`` (image path, relative to the CSV's folder unless absolute), ``user_tags``
(space-separated, as in ``phototag import csv``; an empty cell = the image has no user tags, it is still scored) and
an optional ``id`` (the name shown in the output instead of the path). A model that reads no image (``contextual``
with ``mode=tags``) needs no ``file`` column: each row is then named by ``id`` or its line number.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "posts.csv").write_text("id,user_tags\\npost1,dog beach\\npost2,\\n")
    >>> batch = read_batch_input(folder / "posts.csv", need_files=False, need_user_tags=True)
    >>> batch.names, batch.user_tags
    (['post1', 'post2'], [['dog', 'beach'], []])
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from .data import split_tag_string


@dataclass
class BatchInput:
    """Rows of a batch-input CSV.

    Attributes:
        names: Output name of each row (``id``, else ``file``, else ``line N``).
        paths: Image path of each row (absolute or relative to the working directory), or ``None`` without files.
        user_tags: The user's tags of each row, or ``None`` when the CSV has no ``user_tags`` column.
    """

    names: list[str]
    paths: list[str] | None
    user_tags: list[list[str]] | None


def read_batch_input(path: str | os.PathLike, *, need_files: bool, need_user_tags: bool) -> BatchInput:
    """Read a batch-input CSV (see the module doc).

    Args:
        path: The CSV file.
        need_files: The model reads images: every row must name an existing ``file``.
        need_user_tags: The model reads user tags: the ``user_tags`` column must exist.

    Raises:
        ValueError: Missing file or column, empty ``file`` cell, missing image, no rows (message names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Batch input '{path}' does not exist; give a CSV with columns file,user_tags.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"Batch input '{path}' is not a UTF-8 text file ({err}).") from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if need_files and "file" not in columns:
        raise ValueError(f"{path}: this model reads images, so a 'file' column is needed. Got columns {columns}.")
    if need_user_tags and "user_tags" not in columns:
        raise ValueError(
            f"{path}: this model reads the user's own tags, so a 'user_tags' column is needed (space-separated tags; "
            f"leave a cell empty for an image without tags). Got columns {columns}."
        )
    names: list[str] = []
    paths: list[str] = []
    user_tags: list[list[str]] = []
    for line_no, raw in enumerate(reader, 2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        file = row.get("file", "")
        if need_files:
            if not file:
                raise ValueError(f"{path} line {line_no}: the 'file' cell is empty.")
            image = Path(file) if Path(file).is_absolute() else path.parent / file
            if not image.exists():
                raise ValueError(f"{path} line {line_no}: image '{image}' does not exist.")
            paths.append(str(image))
        names.append(row.get("id") or file or f"line {line_no}")
        user_tags.append(split_tag_string(row.get("user_tags")))
    if not names:
        raise ValueError(f"{path}: the CSV has a header but no rows.")
    return BatchInput(
        names=names,
        paths=paths if need_files else None,
        user_tags=user_tags if "user_tags" in columns else None,
    )

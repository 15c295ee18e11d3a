"""The tagging catalogue: which photos phototag already tagged, from which content, with which model.

One SQLite file (``catalog.sqlite`` in the cache folder, or ``--catalog PATH``) with a row per photo and write mode:
path, size, modification time, content hash (SHA-256), model fingerprint, the keywords written and the file written.
SQLite commits atomically, so a run killed at any point leaves the catalogue consistent: a photo is recorded only
after its keywords were written, and an unrecorded photo is simply tagged again (writing is idempotent).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS photos (
    path TEXT NOT NULL,
    mode TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    keywords TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (path, mode)
)
"""


def default_catalog_path() -> Path:
    """``catalog.sqlite`` in phototag's cache folder (``$PHOTOTAG_CACHE``, else ``~/.cache/phototag``)."""
    return Path(os.environ.get("PHOTOTAG_CACHE", Path.home() / ".cache" / "phototag")) / "catalog.sqlite"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class TagCatalog:
    """A catalogue file; open with :meth:`open` (a context manager)."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike | None = None) -> TagCatalog:
        """Open (creating it when missing) the catalogue at ``path`` (default: :func:`default_catalog_path`).

        Raises:
            ValueError: The file exists but is not a phototag catalogue (names the file).
        """
        path = Path(path) if path is not None else default_catalog_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = sqlite3.connect(path, isolation_level=None)  # autocommit: one row, one transaction
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{path}: not a phototag catalogue ({err}); give another --catalog path.") from None
        return cls(connection, path)

    def __enter__(self) -> TagCatalog:
        return self

    def __exit__(self, *exc) -> None:
        self._db.close()

    @staticmethod
    def _key(photo: str | os.PathLike) -> str:
        return str(Path(photo).resolve())

    def lookup(self, photo: str | os.PathLike, mode: str) -> dict | None:
        """The row of ``photo`` (keys: size, mtime_ns, digest, fingerprint, keywords, target), or ``None``."""
        row = self._db.execute(
            "SELECT size, mtime_ns, digest, fingerprint, keywords, target FROM photos WHERE path = ? AND mode = ?",
            (self._key(photo), mode),
        ).fetchone()
        if row is None:
            return None
        names = ("size", "mtime_ns", "digest", "fingerprint", "keywords", "target")
        found = dict(zip(names, row, strict=True))
        found["keywords"] = json.loads(found["keywords"])
        return found

    def needs_work(self, photo: str | os.PathLike, mode: str, fingerprint: str) -> bool:
        """Whether ``photo`` must be (re-)tagged: never recorded, another model, or other content.

        Size and modification time unchanged = same content (no read); otherwise the content hash decides (a
        photo only touched, or copied back, is not re-tagged; its new time is recorded).
        """
        row = self.lookup(photo, mode)
        if row is None or row["fingerprint"] != fingerprint:
            return True
        stat = os.stat(photo)
        if stat.st_size == row["size"] and stat.st_mtime_ns == row["mtime_ns"]:
            return False
        if stat.st_size != row["size"] or file_digest(photo) != row["digest"]:
            return True
        self._db.execute(
            "UPDATE photos SET mtime_ns = ? WHERE path = ? AND mode = ?", (stat.st_mtime_ns, self._key(photo), mode)
        )
        return False

    def record(
        self,
        photo: str | os.PathLike,
        mode: str,
        *,
        size: int,
        mtime_ns: int,
        digest: str,
        fingerprint: str,
        keywords: Sequence[str],
        target: str | os.PathLike,
    ) -> None:
        """Remember that ``photo`` (with this content) got ``keywords`` from the model ``fingerprint``."""
        self._db.execute(
            "INSERT OR REPLACE INTO photos VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self._key(photo), mode, size, mtime_ns, digest, fingerprint, json.dumps(list(keywords)), str(target)),
        )

    def forget(self, photo: str | os.PathLike, mode: str) -> None:
        """Drop ``photo``'s row (after ``untag``), so the next run tags it again."""
        self._db.execute("DELETE FROM photos WHERE path = ? AND mode = ?", (self._key(photo), mode))

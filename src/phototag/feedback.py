"""User feedback on suggested tags, kept in one SQLite file, and its export as a training dataset.

The web page of ``phototag serve`` stores every photo a user gives feedback on (its bytes, once per content hash)
and every accept / reject click. :func:`feedback_to_dataset` turns the latest decision per (photo, tag) into a
phototag dataset directory (accepted tags as targets, rejected ones recorded in each record's ``meta``), which
``phototag update MODEL_DIR DATASET_DIR`` or ``phototag train`` learns from.

Database schema (stdlib :mod:`sqlite3`, WAL journal so the server and an export can read and write together)::

    images(sha1 TEXT PRIMARY KEY, name TEXT, content_type TEXT, data BLOB, width INT, height INT,
           user_tags TEXT (JSON list), created REAL)
    decisions(id INTEGER PRIMARY KEY, image_sha1 TEXT -> images, tag TEXT, decision TEXT ('accept' | 'reject' |
              'clear'), score REAL NULL, model TEXT NULL, created REAL)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .fileio import atomic_directory

log = logging.getLogger(__name__)

DECISIONS = ("accept", "reject", "clear")

#: Longest tag accepted (characters, after surrounding spaces are removed).
MAX_TAG_LENGTH = 100
#: Most user tags stored with one photo.
MAX_USER_TAGS = 64
#: Punctuation a tag may hold besides letters, marks, digits, symbols (emoji) and single spaces.
TAG_PUNCTUATION = frozenset("-_'’.&+#@/:!?")
#: Symbols refused although they are symbols: markup and shell characters have no place in a keyword.
TAG_REFUSED_SYMBOLS = frozenset("<>`|^")


def clean_tag(tag: str) -> str:
    """A tag as stored: surrounding spaces removed; refused when it could corrupt a vocabulary or a sidecar.

    Allowed: letters, combining marks, digits, symbols such as emoji, single inner spaces and the punctuation in
    :data:`TAG_PUNCTUATION`. Refused (``ValueError`` saying why): empty or whitespace-only, longer than
    :data:`MAX_TAG_LENGTH`, control characters (NUL, newline, tab, ...), other punctuation (quotes, brackets,
    ``;``...) and the symbols in :data:`TAG_REFUSED_SYMBOLS` (``<``, ``>``, ...).

    >>> clean_tag("  new york ")
    'new york'
    """
    if not isinstance(tag, str):
        raise ValueError(f"a tag must be a string, got {type(tag).__name__}")
    tag = tag.strip()
    if not tag:
        raise ValueError("a tag must not be empty or only spaces")
    if len(tag) > MAX_TAG_LENGTH:
        raise ValueError(f"a tag must be at most {MAX_TAG_LENGTH} characters, got {len(tag)}")
    if "  " in tag:
        raise ValueError(f"a tag must not hold repeated spaces: {tag!r}")
    for char in tag:
        kind = unicodedata.category(char)
        if char == " " or (kind[0] in "LMNS" and char not in TAG_REFUSED_SYMBOLS) or char in TAG_PUNCTUATION:
            continue
        what = "control character" if kind[0] in "CZ" else "character"
        raise ValueError(f"a tag must not hold the {what} {char!r}: {tag[:40]!r}")
    return tag


Tag = Annotated[str, Field(max_length=4 * MAX_TAG_LENGTH), AfterValidator(clean_tag)]


class FeedbackDecision(BaseModel):
    """One accept / reject / clear click, as the service receives it and the store records it (one schema)."""

    model_config = ConfigDict(extra="forbid")

    image_id: str = Field(pattern="^[0-9a-f]{40}$", description="from POST /v1/feedback/images (SHA-1, 40 hex)")
    tag: Tag = Field(description=f"the tag decided on (at most {MAX_TAG_LENGTH} characters)")
    decision: Literal["accept", "reject", "clear"] = Field(description="accept, reject or clear")
    score: float | None = Field(
        None, ge=0.0, le=1.0, allow_inf_nan=False, description="the score the tag was suggested with (0 to 1)"
    )


def validation_message(err: ValidationError) -> str:
    """One line from a pydantic error: ``field: what is wrong`` for each problem."""
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item.get("loc", ()))
        message = str(item.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def clean_user_tags(text: str | Sequence[str] | None) -> list[str]:
    """The user's own tags (a space-separated string or a list), each checked by :func:`clean_tag`.

    Raises:
        ValueError: More than :data:`MAX_USER_TAGS` tags, or a tag :func:`clean_tag` refuses.
    """
    tags = (text or "").split() if isinstance(text, str | None) else [t for t in text if t.strip()]
    if len(tags) > MAX_USER_TAGS:
        raise ValueError(f"at most {MAX_USER_TAGS} user tags per photo, got {len(tags)}")
    return [clean_tag(t) for t in tags]


#: File name ending per image content type, for exported images.
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tif",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    sha1 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    data BLOB NOT NULL,
    width INTEGER,
    height INTEGER,
    user_tags TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_sha1 TEXT NOT NULL REFERENCES images(sha1),
    tag TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'clear')),
    score REAL,
    model TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_image ON decisions(image_sha1, tag, id);
"""


def default_feedback_path() -> Path:
    """``$PHOTOTAG_FEEDBACK_DB`` if set, else ``~/.local/share/phototag/feedback.sqlite`` (user data, not cache)."""
    env = os.environ.get("PHOTOTAG_FEEDBACK_DB")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "phototag" / "feedback.sqlite"


@dataclass
class FeedbackExample:
    """The latest decisions on one photo.

    Attributes:
        sha1: Content hash of the photo (its id in the database).
        name: File name the photo was uploaded under.
        accepted: Tags whose latest decision is ``accept``, in the order first decided.
        rejected: Tags whose latest decision is ``reject``.
        user_tags: The user's own tags sent with the photo.
    """

    sha1: str
    name: str
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    user_tags: list[str] = field(default_factory=list)


class FeedbackStore:
    """Photos and accept/reject decisions in one SQLite file (thread-safe: one connection behind a lock).

    Args:
        path: The database file (created with its folder when missing).

    Example:
        >>> store = FeedbackStore(tmp_path / "feedback.sqlite")  # doctest: +SKIP
        >>> image_id = store.add_image(jpeg_bytes, name="beach.jpg", content_type="image/jpeg")  # doctest: +SKIP
        >>> store.add_decision(image_id, "sand", "accept", score=0.83, model="default")  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
            self._conn.commit()
        except sqlite3.DatabaseError as err:
            raise ValueError(
                f"Feedback database '{self.path}' cannot be opened ({err}); give another --feedback-db path."
            ) from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------------------------------
    def add_image(
        self,
        data: bytes,
        *,
        name: str,
        content_type: str,
        width: int | None = None,
        height: int | None = None,
        user_tags: Sequence[str] = (),
    ) -> str:
        """Store a photo (once per content); returns its id, the SHA-1 of the bytes.

        Raises:
            ValueError: A user tag :func:`clean_tag` refuses.
        """
        user_tags = clean_user_tags(list(user_tags))
        sha1 = hashlib.sha1(data).hexdigest()
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO images(sha1, name, content_type, data, width, height, user_tags, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sha1, name, content_type, data, width, height, json.dumps(list(user_tags)), time.time()),
            )
        return sha1

    def add_decision(
        self, image_id: str, tag: str, decision: str, *, score: float | None = None, model: str | None = None
    ) -> int:
        """Record one click; returns the row id.

        Raises:
            ValueError: A field :class:`FeedbackDecision` refuses (``decision`` not one of :data:`DECISIONS`, a tag
                :func:`clean_tag` refuses, a score that is not a finite number in [0, 1]).
            KeyError: No stored photo has id ``image_id``.
        """
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}. Got {decision!r} instead.")
        try:
            checked = FeedbackDecision(image_id=image_id, tag=tag, decision=decision, score=score)
        except ValidationError as err:
            raise ValueError(validation_message(err)) from None
        tag, score = checked.tag, checked.score
        with self._lock, self._conn:
            if self._conn.execute("SELECT 1 FROM images WHERE sha1 = ?", (image_id,)).fetchone() is None:
                raise KeyError(image_id)
            cursor = self._conn.execute(
                "INSERT INTO decisions(image_sha1, tag, decision, score, model, created) VALUES (?, ?, ?, ?, ?, ?)",
                (image_id, tag, decision, score, model, time.time()),
            )
            return int(cursor.lastrowid)

    # --- reading ------------------------------------------------------------------------------------------------
    def has_image(self, image_id: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM images WHERE sha1 = ?", (image_id,)).fetchone() is not None

    def image(self, image_id: str) -> tuple[bytes, str, str]:
        """``(bytes, name, content_type)`` of a stored photo; ``KeyError`` when unknown."""
        with self._lock:
            row = self._conn.execute(
                "SELECT data, name, content_type FROM images WHERE sha1 = ?", (image_id,)
            ).fetchone()
        if row is None:
            raise KeyError(image_id)
        return bytes(row[0]), row[1], row[2]

    def decisions(self) -> list[dict[str, Any]]:
        """Every recorded click, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, image_sha1, tag, decision, score, model, created FROM decisions ORDER BY id"
            ).fetchall()
        keys = ("id", "image_id", "tag", "decision", "score", "model", "created")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def examples(self) -> list[FeedbackExample]:
        """The latest decision per (photo, tag), grouped by photo; photos in the order first stored."""
        with self._lock:
            images = self._conn.execute("SELECT sha1, name, user_tags FROM images ORDER BY created, sha1").fetchall()
            rows = self._conn.execute("SELECT image_sha1, tag, decision FROM decisions ORDER BY id").fetchall()
        latest: dict[str, dict[str, str]] = {}
        for sha1, tag, decision in rows:
            per_image = latest.setdefault(sha1, {})
            per_image.pop(tag, None)  # re-insert so the order is the order of the latest decision
            per_image[tag] = decision
        out = []
        for sha1, name, user_tags in images:
            decided = latest.get(sha1, {})
            out.append(
                FeedbackExample(
                    sha1=sha1,
                    name=name,
                    accepted=[t for t, d in decided.items() if d == "accept"],
                    rejected=[t for t, d in decided.items() if d == "reject"],
                    user_tags=list(json.loads(user_tags or "[]")),
                )
            )
        return out

    def summary(self) -> dict[str, int]:
        """Counts: stored photos, clicks, photos with at least one accepted tag."""
        examples = self.examples()
        with self._lock:
            n_decisions = self._conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        return {
            "images": len(examples),
            "decisions": int(n_decisions),
            "images_with_accepted_tags": sum(1 for e in examples if e.accepted),
        }


def feedback_to_dataset(
    db: str | os.PathLike | FeedbackStore, out_dir: str | os.PathLike, *, name: str = "feedback"
) -> tuple[Any, dict[str, int]]:
    """Write the feedback as a phototag dataset directory a model can be updated or trained on.

    Layout: ``OUT/dataset.json``, ``OUT/manifest.jsonl``, ``OUT/vocab.json`` (as :meth:`phototag.data.Dataset.save`)
    and ``OUT/images/<sha1>.<ext>`` (the stored photos; ``image_root`` points there). Every record is in the
    ``train`` split; its ``tags`` are the accepted tags, ``user_tags`` the user's own and ``meta["rejected"]`` the
    rejected tags. Photos without any accepted tag carry no positive label and are left out (counted in the
    returned report and in ``dataset.json``). Written atomically.

    Args:
        db: The feedback database file (or an open :class:`FeedbackStore`).
        out_dir: Dataset directory to write (a new folder, or an existing phototag dataset to replace).
        name: Dataset name.

    Returns:
        ``(dataset, report)``: the saved :class:`phototag.data.Dataset` and counts (``images``, ``exported``,
        ``skipped_no_accepted``, ``accepted_tags``, ``rejected_tags``).

    Raises:
        ValueError: The database holds no photo with an accepted tag (nothing to learn from).
    """
    from .data import Dataset, ImageRecord

    store = db if isinstance(db, FeedbackStore) else FeedbackStore(existing_feedback_db(db))
    try:
        examples = store.examples()
        dropped = _drop_invalid_tags(examples)
        usable = [e for e in examples if e.accepted]
        report = {
            "images": len(examples),
            "exported": len(usable),
            "skipped_no_accepted": len(examples) - len(usable),
            "accepted_tags": sum(len(e.accepted) for e in usable),
            "rejected_tags": sum(len(e.rejected) for e in examples),
            "invalid_tags_dropped": dropped,
        }
        if not usable:
            raise ValueError(
                f"Feedback database '{store.path}' has {len(examples)} photo(s) but none with an accepted tag; "
                "accept some suggested tags on the web page first."
            )
        out = Path(out_dir)
        with atomic_directory(out, marker="dataset.json", what="dataset") as tmp:
            (tmp / "images").mkdir()
            records = []
            for example in usable:
                data, _, content_type = store.image(example.sha1)
                file = f"{example.sha1}{_EXTENSIONS.get(content_type, Path(example.name).suffix.lower() or '.img')}"
                (tmp / "images" / file).write_bytes(data)
                records.append(
                    ImageRecord(
                        id=example.sha1[:16],
                        file=file,
                        tags=example.accepted,
                        user_tags=example.user_tags,
                        split="train",
                        meta={"rejected": example.rejected, "name": example.name, "sha1": example.sha1},
                    )
                )
            dataset = Dataset(
                records,
                name=name,
                image_root=out.resolve() / "images",
                info={"source": "feedback", "feedback_db": str(store.path.resolve()), "export": report},
            )
            # Dataset.save writes atomically into a new folder; build it inside ours and lift its files up.
            dataset.save(tmp / "meta")
            for child in (tmp / "meta").iterdir():
                os.replace(child, tmp / child.name)
            (tmp / "meta").rmdir()
        dataset.root = out
        log.info("Exported %d of %d feedback photos to %s", len(usable), len(examples), out)
        return dataset, report
    finally:
        if store is not db:
            store.close()


def _drop_invalid_tags(examples: list[FeedbackExample]) -> int:
    """Remove tags :func:`clean_tag` refuses (a database written before tags were checked); returns how many."""
    dropped = 0
    for example in examples:
        for name in ("accepted", "rejected", "user_tags"):
            tags = getattr(example, name)
            kept = []
            for tag in tags:
                try:
                    kept.append(clean_tag(tag))
                except ValueError:
                    dropped += 1
            setattr(example, name, kept)
    if dropped:
        log.warning("Left out %d stored tag(s) that are not valid tags (control characters, empty, ...).", dropped)
    return dropped


def existing_feedback_db(path: str | os.PathLike) -> Path:
    """``path`` as a Path; ``FileNotFoundError`` naming how the database is made when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Feedback database '{path}' does not exist; it is created by `phototag serve --feedback-db {path}`."
        )
    return path

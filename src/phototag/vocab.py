"""Tag normalisation and the tag vocabulary (the column order of every score matrix).

:func:`normalize_tag` turns a raw user tag or hashtag into its canonical form (Unicode NFKC, percent-decoding and
``+`` → space as in YFCC100M, lower-case, ``#`` stripped, white space folded, optional lemmatisation as HARRISON did).
:class:`TagVocabulary` follows scikit-learn's ``MultiLabelBinarizer`` contract: ``fit`` on the training split's tag
lists, ``transform`` to a 0/1 matrix, ``inverse_transform`` back; learned attributes end in ``_``.

Example:
    >>> vocab = TagVocabulary(min_count=1).fit([["Sky", "#sea"], ["sky", "boat", "2019"]])
    >>> vocab.tags_
    ['sky', 'sea', 'boat']
    >>> vocab.transform([["SKY", "plane"]]).tolist()
    [[1.0, 0.0, 0.0]]
    >>> vocab.last_unknown_
    {'plane': 1}
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from .fileio import atomic_write_text

VOCAB_FORMAT = "phototag-vocabulary"
VOCAB_FORMAT_VERSION = 1

#: Camera and phone brands/models that users (and cameras) add as tags; they say nothing about the picture.
CAMERA_TAGS = frozenset(
    {
        "canon", "nikon", "sony", "fujifilm", "fuji", "olympus", "panasonic", "lumix", "pentax", "leica", "kodak",
        "samsung", "minolta", "konica", "hasselblad", "sigma", "tamron", "ricoh", "casio", "gopro", "iphone",
        "ipad", "huawei", "xiaomi", "oneplus", "eos", "canoneos", "nikond", "dslr", "slr", "powershot", "cybershot",
        "coolpix", "finepix", "alpha", "instax", "polaroid", "lomo", "holga", "zeiss", "nokia", "motorola", "htc",
        "lg", "pixel", "galaxy",
    }
)  # fmt: skip
#: Camera brands matched anywhere in a tag by ``camera_substrings`` (the VGG16-tagger paper's cleaning).
CAMERA_BRANDS = (
    "canon", "nikon", "sony", "fujifilm", "olympus", "panasonic", "lumix", "pentax", "leica", "kodak", "samsung",
    "minolta", "konica", "hasselblad", "sigma", "tamron", "ricoh", "casio", "gopro", "iphone", "huawei", "xiaomi",
)  # fmt: skip
_CAMERA_MODEL = re.compile(
    r"^(canon|nikon|sony|fuji(film)?|olympus|panasonic|pentax|leica|iphone|samsung|eos)[ \-]?\w+$"
)
_NUMBER_ONLY = re.compile(r"^[\d\s.,:;/_\-+]+$")
_SPACES = re.compile(r"\s+")

DROP_REASONS = ("empty", "number", "camera", "min_count", "max_size")


def normalize_tag(tag: str, *, lemmatize: bool = False, language: str = "en") -> str:
    """Canonical form of one raw tag (may be ``""`` when nothing is left).

    Args:
        tag: A raw tag, e.g. ``"#Sunset"``, ``"new+york"``, ``"caf%C3%A9"``.
        lemmatize: Reduce each word to its lemma (``walking`` → ``walk``) with simplemma (extra ``lemma``).
        language: simplemma language code.

    Example:
        >>> normalize_tag("#New+York%20City")
        'new york city'
        >>> normalize_tag("ＣＡＦÉ")
        'café'
    """
    text = unicodedata.normalize("NFKC", str(tag))
    if "%" in text:
        text = unquote(text)
    text = text.replace("+", " ").lower().strip().lstrip("#").strip()
    text = _SPACES.sub(" ", text)
    if lemmatize and text:
        text = " ".join(_lemma(word, language) for word in text.split(" "))
    return text


@lru_cache(maxsize=200_000)
def _lemma(word: str, language: str) -> str:
    try:
        import simplemma
    except ImportError:
        raise ImportError('Lemmatisation needs simplemma: pip install "phototag[lemma]"') from None
    return simplemma.lemmatize(word, lang=language).lower()


def is_english_word(word: str, language: str = "en") -> bool:
    """Whether ``word`` is in simplemma's dictionary for ``language`` (the offline English lexicon; extra ``lemma``).

    Stands in for WordNet, which the refinement paper used to keep "meaningful" tags and which has no offline copy
    on PyPI. simplemma's list is larger (it knows place names such as ``london``).

    Example:
        >>> is_english_word("dog"), is_english_word("nikond80")
        (True, False)
    """
    try:
        import simplemma
    except ImportError:
        raise ImportError('The English lexicon needs simplemma: pip install "phototag[lemma]"') from None
    return bool(word) and simplemma.is_known(word, lang=language)


PARENT_WORDS_FILE = Path(__file__).parent / "data" / "parent_words.tsv.gz"


@lru_cache(maxsize=1)
def _parent_table() -> dict[str, tuple[str, ...]]:
    import gzip

    table: dict[str, tuple[str, ...]] = {}
    with gzip.open(PARENT_WORDS_FILE, "rt", encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            word, _, parents = line.rstrip("\n").partition("\t")
            table[word] = tuple(parents.split())
    return table


def parent_words(word: str) -> tuple[str, ...]:
    """The words one and two steps above ``word`` in WordNet 3.0's noun hierarchy (its most common sense, physical
    things only; the table is built by ``scripts/build_parent_words.py``); ``()`` for an unknown word.

    Example:
        >>> parent_words("girl"), parent_words("dog"), parent_words("nikond80")
        (('woman', 'adult', 'female'), ('canine', 'carnivore', 'animal'), ())
    """
    return _parent_table().get(word, ())


def with_parent_words(tags: Sequence[str]) -> list[str]:
    """``tags`` followed by their parent words (:func:`parent_words`) not already there, in order.

    Example:
        >>> with_parent_words(["girl", "beach", "woman"])
        ['girl', 'beach', 'woman', 'adult', 'female']
    """
    out = dict.fromkeys(tags)  # ordered, each word once
    for tag in list(out):
        out.update(dict.fromkeys(p for p in parent_words(tag) if p not in out))
    return list(out)


_DIGIT = re.compile(r"\d")


def drop_reason(tag: str) -> str | None:
    """Why a normalised tag is never a vocabulary entry (``"empty"``, ``"number"``, ``"camera"``), else ``None``."""
    if not tag:
        return "empty"
    if _NUMBER_ONLY.match(tag):
        return "number"
    if tag in CAMERA_TAGS or _CAMERA_MODEL.match(tag):
        return "camera"
    return None


class TagVocabulary:
    """The fitted list of tags a model scores, and the mapping between tag lists and 0/1 matrices.

    Args:
        min_count: Keep tags seen in at least this many images of the fitting data.
        max_size: Keep at most this many tags (the most frequent; ties broken by first appearance).
        tag_limit: Use only the first N tags of each image (as users list them), at fit and transform time.
        lemmatize: Lemmatise tags (needs simplemma, extra ``lemma``).
        language: Language of the lemmatiser.
        drop_numbers: Drop number-only tags (years, counts).
        drop_cameras: Drop camera-brand/model tags.
        drop_with_digits: Drop every tag containing a digit (the VGG16-tagger paper's cleaning; off by default,
            which drops only number-only tags, so ``route66`` and ``3d`` stay).
        camera_substrings: Drop tags that contain a camera brand anywhere (``canon5d``, ``nikonfan``; the same
            paper's rule; off by default, which drops brand names and ``brand-model`` tags only).
        tags: Build a fixed vocabulary from this list instead of fitting (still normalised).

    Attributes:
        tags_: The tags, in column order (most frequent first when fitted).
        index_: ``{tag: column}``.
        counts_: Images per tag in the fitting data.
        dropped_: ``{reason: number of distinct tags}`` dropped while fitting.
        last_unknown_: ``{tag: occurrences}`` of tags not in the vocabulary seen by the last ``transform``.
    """

    def __init__(
        self,
        *,
        min_count: int = 1,
        max_size: int | None = None,
        tag_limit: int | None = None,
        lemmatize: bool = False,
        language: str = "en",
        drop_numbers: bool = True,
        drop_cameras: bool = True,
        drop_with_digits: bool = False,
        camera_substrings: bool = False,
        tags: Sequence[str] | None = None,
    ):
        self.min_count = min_count
        self.max_size = max_size
        self.tag_limit = tag_limit
        self.lemmatize = lemmatize
        self.language = language
        self.drop_numbers = drop_numbers
        self.drop_cameras = drop_cameras
        self.drop_with_digits = drop_with_digits
        self.camera_substrings = camera_substrings
        self.tags = tags
        if tags is not None:
            self._set_tags(self._clean(tags), counts={})

    # --- settings -----------------------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {
            "min_count": self.min_count,
            "max_size": self.max_size,
            "tag_limit": self.tag_limit,
            "lemmatize": self.lemmatize,
            "language": self.language,
            "drop_numbers": self.drop_numbers,
            "drop_cameras": self.drop_cameras,
            "drop_with_digits": self.drop_with_digits,
            "camera_substrings": self.camera_substrings,
        }

    def _check_params(self) -> None:
        if not isinstance(self.min_count, int) or self.min_count < 1:
            raise ValueError(f"min_count must be an int >= 1. Got {self.min_count!r} instead.")
        for name in ("max_size", "tag_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1. Got {value!r} instead.")

    # --- normalisation ------------------------------------------------------------------------------------------
    def _reason(self, tag: str) -> str | None:
        reason = drop_reason(tag)
        if reason is None and tag:
            if self.drop_with_digits and _DIGIT.search(tag):
                reason = "number"
            elif self.camera_substrings and any(brand in tag for brand in CAMERA_BRANDS):
                reason = "camera"
        if (reason == "number" and not self.drop_numbers) or (reason == "camera" and not self.drop_cameras):
            return None
        return reason

    def normalize(self, tags: Iterable[str]) -> list[str]:
        """Normalised tags of one image, in order, without duplicates or dropped tags, cut to ``tag_limit``."""
        out: list[str] = []
        for raw in tags:
            tag = normalize_tag(raw, lemmatize=self.lemmatize, language=self.language)
            if self._reason(tag) is None and tag not in out:
                out.append(tag)
                if self.tag_limit is not None and len(out) >= self.tag_limit:
                    break
        return out

    def _clean(self, tags: Iterable[str]) -> list[str]:
        out: list[str] = []
        for raw in tags:
            tag = normalize_tag(raw, lemmatize=self.lemmatize, language=self.language)
            if tag and tag not in out:
                out.append(tag)
        return out

    # --- fitting ------------------------------------------------------------------------------------------------
    def fit(self, tag_lists: Iterable[Iterable[str]]) -> TagVocabulary:
        """Learn the vocabulary from the tags of each training image.

        Raises:
            ValueError: No tag survives the filters (the message gives the counts dropped per reason).
        """
        self._check_params()
        counts: Counter[str] = Counter()
        first_seen: dict[str, int] = {}
        dropped: dict[str, set[str]] = {reason: set() for reason in DROP_REASONS}
        n_images = 0
        for tags in tag_lists:
            n_images += 1
            kept: list[str] = []
            for raw in tags:
                tag = normalize_tag(raw, lemmatize=self.lemmatize, language=self.language)
                reason = self._reason(tag)
                if reason is not None:
                    dropped[reason].add(str(raw))
                elif tag not in kept:
                    kept.append(tag)
            if self.tag_limit is not None:
                kept = kept[: self.tag_limit]
            for tag in kept:
                counts[tag] += 1
                first_seen.setdefault(tag, len(first_seen))
        frequent = [t for t in counts if counts[t] >= self.min_count]
        dropped["min_count"] = {t for t in counts if counts[t] < self.min_count}
        frequent.sort(key=lambda t: (-counts[t], first_seen[t]))
        if self.max_size is not None and len(frequent) > self.max_size:
            dropped["max_size"] = set(frequent[self.max_size :])
            frequent = frequent[: self.max_size]
        if not frequent:
            summary = ", ".join(f"{r}: {len(s)}" for r, s in dropped.items() if s) or "no tags at all"
            raise ValueError(
                f"No tag is left to learn from {n_images} images (dropped distinct tags by reason: {summary}). "
                "Check the tag column, or lower min_count."
            )
        self._set_tags(frequent, counts={t: counts[t] for t in frequent})
        self.dropped_ = {reason: len(tags) for reason, tags in dropped.items()}
        self.n_fit_images_ = n_images
        return self

    def _set_tags(self, tags: Sequence[str], counts: dict[str, int]) -> None:
        self.tags_ = list(tags)
        self.index_ = {tag: i for i, tag in enumerate(self.tags_)}
        if len(self.index_) != len(self.tags_):
            raise ValueError("The vocabulary has duplicate tags after normalisation.")
        self.counts_ = dict(counts)
        self.dropped_ = {reason: 0 for reason in DROP_REASONS}
        self.last_unknown_: dict[str, int] = {}

    def add_tags(self, tags: Iterable[str]) -> list[int]:
        """Append new tags (online learning); returns the column of each (existing tags keep theirs)."""
        self.check_fitted()
        columns = []
        for tag in self._clean(tags):
            if tag not in self.index_:
                self.index_[tag] = len(self.tags_)
                self.tags_.append(tag)
                self.counts_.setdefault(tag, 0)
            columns.append(self.index_[tag])
        return columns

    # --- use ----------------------------------------------------------------------------------------------------
    def check_fitted(self) -> None:
        if not hasattr(self, "tags_"):
            raise ValueError("This TagVocabulary is not fitted yet; call fit() or load() first.")

    def __len__(self) -> int:
        self.check_fitted()
        return len(self.tags_)

    def __contains__(self, tag: object) -> bool:
        return isinstance(tag, str) and tag in getattr(self, "index_", {})

    def __repr__(self) -> str:
        size = len(self.tags_) if hasattr(self, "tags_") else "unfitted"
        return f"TagVocabulary({size} tags, {self.get_params()})"

    def transform(self, tag_lists: Iterable[Iterable[str]]) -> np.ndarray:
        """0/1 matrix ``(n_images, n_tags)`` float32; tags not in the vocabulary are counted in ``last_unknown_``."""
        self.check_fitted()
        rows: list[list[int]] = []
        unknown: Counter[str] = Counter()
        for tags in tag_lists:
            columns = []
            for tag in self.normalize(tags):
                column = self.index_.get(tag)
                if column is None:
                    unknown[tag] += 1
                else:
                    columns.append(column)
            rows.append(columns)
        matrix = np.zeros((len(rows), len(self.tags_)), dtype=np.float32)
        for i, columns in enumerate(rows):
            matrix[i, columns] = 1.0
        self.last_unknown_ = dict(unknown.most_common())
        return matrix

    def inverse_transform(self, matrix: np.ndarray, threshold: float = 0.5) -> list[list[str]]:
        """Tag lists of a 0/1 (or score) matrix ``(n_images, n_tags)``: the tags at or above ``threshold``."""
        self.check_fitted()
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.tags_):
            raise ValueError(f"Expected a matrix of shape (n, {len(self.tags_)}). Got {matrix.shape} instead.")
        return [[self.tags_[j] for j in np.flatnonzero(row >= threshold)] for row in matrix]

    def encode(self, tag_lists: Iterable[Iterable[str]], *, max_len: int | None = None) -> list[list[int]]:
        """Embedding indices per image: tag column + 1, with slot 0 for out-of-vocabulary tags.

        Example:
            >>> TagVocabulary(tags=["sky", "sea"]).encode([["sea", "dog", "sky"]])
            [[2, 0, 1]]
        """
        self.check_fitted()
        out = []
        for tags in tag_lists:
            ids = [self.index_.get(tag, -1) + 1 for tag in self.normalize(tags)]
            out.append(ids[:max_len] if max_len is not None else ids)
        return out

    # --- persistence --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self.check_fitted()
        return {
            "format": VOCAB_FORMAT,
            "format_version": VOCAB_FORMAT_VERSION,
            "params": self.get_params(),
            "tags": self.tags_,
            "counts": [int(self.counts_.get(t, 0)) for t in self.tags_],
            "dropped": self.dropped_,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "vocabulary") -> TagVocabulary:
        if data.get("format") != VOCAB_FORMAT or data.get("format_version") != VOCAB_FORMAT_VERSION:
            raise ValueError(
                f"{source} is not a phototag vocabulary of format version {VOCAB_FORMAT_VERSION} "
                f"(format {data.get('format')!r}, version {data.get('format_version')!r}); re-import the dataset."
            )
        vocab = cls(**data["params"])
        vocab._set_tags(data["tags"], counts=dict(zip(data["tags"], data.get("counts", []), strict=False)))
        vocab.dropped_ = dict(data.get("dropped", vocab.dropped_))
        return vocab

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TagVocabulary:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"Vocabulary file '{path}' is missing.") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"Vocabulary file '{path}' is damaged ({err}).") from None
        return cls.from_dict(data, source=str(path))

"""Keywords in the user's language, from phototag's own offline table (``data/keyword_translations.yaml``).

Models name their tags in English; :func:`translate_predictions` renames the tags of a prediction list
(``[{"image", "tags": [{"tag", "score"}]}]``) for ``--lang``, ``?lang=`` and the web page. A word the table lacks
(a dog breed, a word of a custom model) stays in English rather than disappearing.

Example:
    >>> translate_tag("dog", "de"), translate_tag("dog", "ja"), translate_tag("dog", "en")
    ('Hund', '犬', 'dog')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .errors import BadInputError

TRANSLATIONS_FILE = Path(__file__).resolve().parent / "data" / "keyword_translations.yaml"
DEFAULT_LANGUAGE = "en"


class UnknownLanguageError(BadInputError):
    """A language code the translation table does not have (the message lists the supported ones)."""

    code = "unknown_language"


@cache
def _table() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """``(language code -> name, language code -> {english: translation})``."""
    data = yaml.safe_load(TRANSLATIONS_FILE.read_text(encoding="utf-8"))
    columns = list(data["columns"])
    by_language: dict[str, dict[str, str]] = {code: {} for code in columns}
    for word, row in data["words"].items():
        if not isinstance(row, list) or len(row) != len(columns) or not all(isinstance(x, str) and x for x in row):
            raise ValueError(f"{TRANSLATIONS_FILE}: 'words.{word}' needs {len(columns)} translations ({columns}).")
        for code, translation in zip(columns, row, strict=True):
            by_language[code][str(word)] = translation
    return dict(data["languages"]), by_language


def supported_languages() -> dict[str, str]:
    """Language code -> the language's own name, English first (``{"en": "English", "de": "Deutsch", ...}``)."""
    return dict(_table()[0])


def check_language(lang: str | None) -> str:
    """``lang`` normalised (lower case; ``None`` -> ``"en"``); an unsupported code raises :class:`UnknownLanguageError`.

    Regional forms (``de-CH``, ``pt_BR``) fall back to their language when only it is in the table.
    """
    if lang is None:
        return DEFAULT_LANGUAGE
    code = str(lang).strip().lower().replace("_", "-")
    languages = supported_languages()
    if code not in languages and code.split("-")[0] in languages:
        code = code.split("-")[0]
    if code not in languages:
        listed = ", ".join(f"{c} ({name})" for c, name in languages.items())
        raise UnknownLanguageError(f"Unknown language '{lang}'. Supported languages: {listed}.")
    return code


def translations(lang: str) -> dict[str, str]:
    """English keyword -> keyword in ``lang`` (empty for English)."""
    code = check_language(lang)
    return {} if code == DEFAULT_LANGUAGE else dict(_table()[1][code])


def translate_tag(tag: str, lang: str | None) -> str:
    """``tag`` in ``lang``; a word the table lacks stays as it is."""
    code = check_language(lang)
    return tag if code == DEFAULT_LANGUAGE else _table()[1][code].get(tag, tag)


def missing_translations(words: Sequence[str], lang: str) -> list[str]:
    """The ``words`` the table has no ``lang`` entry for (always empty for English)."""
    code = check_language(lang)
    return [] if code == DEFAULT_LANGUAGE else [w for w in words if w not in _table()[1][code]]


def translate_predictions(predictions: Sequence[Mapping[str, Any]], lang: str | None) -> list[dict[str, Any]]:
    """Predictions ``[{"image", "tags": [{"tag", "score"}]}]`` with every tag in ``lang``.

    Two English tags with one translation (``plane`` and ``airplane`` -> ``Flugzeug``) become one, with the better
    score; the order (best first) is kept.
    """
    code = check_language(lang)
    if code == DEFAULT_LANGUAGE:
        return [dict(p) for p in predictions]
    out = []
    for prediction in predictions:
        tags: dict[str, dict[str, Any]] = {}
        for tag in prediction["tags"]:
            name = translate_tag(str(tag["tag"]), code)
            if name not in tags or tag["score"] > tags[name]["score"]:
                tags[name] = {**tag, "tag": name}
        # dicts keep insertion order: the first (best-ranked) occurrence keeps its place
        out.append({**prediction, "tags": list(tags.values())})
    return out

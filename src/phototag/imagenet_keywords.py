"""The ImageNet-1k -> everyday keyword mapping (``data/imagenet_keywords.yaml``) as arrays a method can score with.

The mapping folds the 1,000 ImageNet classes into the words people write: each class gives one or more
``keywords`` (``coffee mug`` -> coffee, cup, mug), optionally a ``detail`` keyword shown only when the class itself
is confident (a dog breed), and ``parents`` add broader keywords (dog -> mammal, pet -> animal). Everything here is
numpy and YAML only, so tagging never needs timm or PyTorch to know the classes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import yaml

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_MAPPING = DATA_DIR / "imagenet_keywords.yaml"
CLASS_NAMES_FILE = DATA_DIR / "imagenet_classes.txt"
N_CLASSES = 1000

#: What a clean keyword looks like: lower-case words of letters, joined by single spaces or hyphens.
KEYWORD_PATTERN = re.compile(r"^[a-z]+(?:[ -][a-z0-9]+)*$")


class MappingError(ValueError):
    """The keyword mapping file is malformed (the message names the file and the entry)."""


@dataclass(frozen=True)
class KeywordMapping:
    """The parsed mapping file.

    Attributes:
        class_keywords: Per class (index order), its keywords.
        class_detail: Per class, its detail keywords (scored from that class alone).
        parents: Keyword -> its direct parent keywords.
        synonyms: Other spelling -> keyword.
        source: The file it was read from.
    """

    class_keywords: tuple[tuple[str, ...], ...]
    class_detail: tuple[tuple[str, ...], ...]
    parents: dict[str, tuple[str, ...]]
    synonyms: dict[str, str]
    source: str

    def ancestors(self, keyword: str) -> list[str]:
        """All parents of ``keyword``, transitively, nearest first, without repeats."""
        out: list[str] = []
        todo = list(self.parents.get(keyword, ()))
        while todo:
            parent = todo.pop(0)
            if parent not in out:
                out.append(parent)
                todo.extend(self.parents.get(parent, ()))
        return out

    def keywords(self) -> list[str]:
        """Every keyword a class or a parent gives (not the detail ones), sorted."""
        direct = {k for ks in self.class_keywords for k in ks}
        return sorted(direct | {a for k in direct for a in self.ancestors(k)})

    def categories(self) -> list[str]:
        """Keywords that are a parent of another keyword (animal, vehicle, food, ...): broad words whose score sums
        many classes, which the default model adds after its keywords instead of ranking them. Sorted."""
        return sorted({p for parents in self.parents.values() for p in parents})

    def detail_keywords(self) -> list[str]:
        """Detail keywords that are not also ordinary keywords, sorted."""
        ordinary = set(self.keywords())
        return sorted({k for ks in self.class_detail for k in ks} - ordinary)

    def vocabulary(self) -> list[str]:
        """Everything the mapping can name: :meth:`keywords` then :meth:`detail_keywords`."""
        return self.keywords() + self.detail_keywords()

    def resolve(self, word: str) -> str | None:
        """The keyword ``word`` names (itself, or through :attr:`synonyms`), or ``None`` when the mapping lacks it."""
        word = word.strip().lower()
        word = self.synonyms.get(word, word)
        known = set(self.vocabulary())
        return word if word in known else None

    def targets_from_words(self, words: Sequence[Sequence[str]], tag_names: Sequence[str]) -> np.ndarray:
        """0/1 targets ``(n_images, n_tags)`` for calibrating on photos labelled in another vocabulary.

        Each photo's words are matched to keywords (:meth:`resolve`: the keyword itself or a synonym); a matched
        keyword marks its column and its parents' columns (a photo labelled "tiger" is a positive for "big cat",
        "mammal" and "animal" too). Words the mapping lacks mark nothing.
        """
        column = {tag: j for j, tag in enumerate(tag_names)}
        targets = np.zeros((len(words), len(tag_names)), dtype=np.float32)
        for i, photo_words in enumerate(words):
            for word in photo_words:
                keyword = self.resolve(word)
                if keyword is None:
                    continue
                for name in (keyword, *self.ancestors(keyword)):
                    if name in column:
                        targets[i, column[name]] = 1
        return targets

    def membership(self, tag_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which classes make up each tag of a vocabulary.

        Args:
            tag_names: The model's vocabulary, in column order.

        Returns:
            ``(membership (1000, n_tags) uint8, detail (n_tags,) bool, mapped (n_tags,) bool)``: a tag's score is
            the summed probability of its member classes (a parent's members are all its descendants' classes, each
            counted once); ``detail`` marks tags only a detail keyword gives; ``mapped`` is False for tags the
            mapping does not know (they score 0).
        """
        members: dict[str, set[int]] = {}
        details: dict[str, set[int]] = {}
        for index, (keywords, detail) in enumerate(zip(self.class_keywords, self.class_detail, strict=True)):
            for keyword in keywords:
                for name in (keyword, *self.ancestors(keyword)):
                    members.setdefault(name, set()).add(index)
            for keyword in detail:
                details.setdefault(keyword, set()).add(index)
        n = len(tag_names)
        matrix = np.zeros((N_CLASSES, n), dtype=np.uint8)
        is_detail = np.zeros(n, dtype=bool)
        mapped = np.zeros(n, dtype=bool)
        for column, tag in enumerate(tag_names):
            keyword = self.resolve(tag)
            if keyword is None:
                continue
            mapped[column] = True
            if keyword in members:
                matrix[sorted(members[keyword]), column] = 1
            else:
                matrix[sorted(details[keyword]), column] = 1
                is_detail[column] = True
        return matrix, is_detail, mapped


def _fail(source: str, where: str, problem: str) -> MappingError:
    return MappingError(f"{source}: {where}: {problem}")


def _keyword_list(value: object, source: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(source, where, f"expected a list of keywords, got {value!r}")
    for keyword in value:
        if not KEYWORD_PATTERN.match(keyword):
            raise _fail(source, where, f"keyword {keyword!r} is not clean (lower-case letters, spaces, hyphens)")
    return tuple(value)


def load_mapping(path: str | Path | None = None) -> KeywordMapping:
    """Read and check a mapping file (``None``: the one shipped with phototag).

    Raises:
        MappingError: Missing file, bad YAML, a class missing or out of order, an unclean keyword, a parent cycle.
    """
    return _load_mapping(str(Path(path).resolve()) if path is not None else str(DEFAULT_MAPPING))


@cache
def _load_mapping(source: str) -> KeywordMapping:
    try:
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MappingError(f"Keyword mapping file not found: '{source}'.") from None
    except yaml.YAMLError as err:
        raise MappingError(f"{source} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise MappingError(
            f"{source}: expected a mapping with a 'classes' list (see the shipped imagenet_keywords.yaml)."
        )
    classes = data["classes"]
    if len(classes) != N_CLASSES:
        raise _fail(source, "classes", f"expected {N_CLASSES} entries, one per ImageNet class, got {len(classes)}")
    keywords, detail = [], []
    for index, entry in enumerate(classes):
        where = f"classes[{index}]"
        if not isinstance(entry, dict) or entry.get("id") != index:
            raise _fail(source, where, f"expected an entry with id: {index} (classes in index order), got {entry!r}")
        own = _keyword_list(entry.get("keywords"), source, where)
        if not own:
            raise _fail(source, where, f"class {entry.get('class')!r} has no keywords")
        keywords.append(own)
        detail.append(_keyword_list(entry.get("detail"), source, where))
    parents_raw = data.get("parents") or {}
    if not isinstance(parents_raw, dict):
        raise _fail(source, "parents", "expected a mapping keyword: [parent, ...]")
    parents = {str(k): _keyword_list(v, source, f"parents.{k}") for k, v in parents_raw.items()}
    synonyms_raw = data.get("synonyms") or {}
    if not isinstance(synonyms_raw, dict):
        raise _fail(source, "synonyms", "expected a mapping word: keyword")
    synonyms = {str(k).lower(): str(v) for k, v in synonyms_raw.items()}
    mapping = KeywordMapping(tuple(keywords), tuple(detail), parents, synonyms, source)
    _check_no_cycles(mapping)
    known = set(mapping.vocabulary())
    for word, keyword in synonyms.items():
        if keyword not in known:
            raise _fail(source, f"synonyms.{word}", f"{keyword!r} is not a keyword of this mapping")
    return mapping


def _check_no_cycles(mapping: KeywordMapping) -> None:
    def visit(keyword: str, path: tuple[str, ...]) -> None:
        for parent in mapping.parents.get(keyword, ()):
            if parent in path:
                cycle = " -> ".join((*path, parent))
                raise _fail(mapping.source, f"parents.{keyword}", f"parents form a cycle: {cycle}")
            visit(parent, (*path, parent))

    for keyword in mapping.parents:
        visit(keyword, (keyword,))


@cache
def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class descriptions in index order, from the file shipped with phototag (no timm)."""
    lines = CLASS_NAMES_FILE.read_text(encoding="utf-8").splitlines()
    names = [line for line in lines if not line.startswith("#")]
    if len(names) != N_CLASSES:
        raise MappingError(f"{CLASS_NAMES_FILE}: expected {N_CLASSES} class names, found {len(names)}.")
    return names

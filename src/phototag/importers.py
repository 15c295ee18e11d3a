"""Importers: raw dataset layouts → :class:`~phototag.data.Dataset` directories.

Each importer is registered under the name ``phototag import NAME`` uses and returns an unsaved :class:`Dataset`
whose ``info["import"]`` says what went in and what came out (records read, records written, missing files, tags
dropped by reason), so nothing is lost silently. :func:`run_importer` fits the vocabulary on the train split and
saves the directory atomically.

Example:
    >>> list_importers()
    ['corel5k', 'csv', 'harrison', 'library', 'mirflickr']
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import unicodedata
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import library as _library  # noqa: F401  (registers the "library" importer)
from .data import SPLITS, Dataset, ImageRecord, seeded_split, split_tag_string
from .importer_registry import Importer, get_importer, list_importers, register_importer
from .vocab import normalize_tag

__all__ = ["Importer", "RawDataError", "get_importer", "list_importers", "register_importer", "run_importer"]

log = logging.getLogger(__name__)

#: Column order of MIRFLICKR-25K's 24 labels (../shared/data/README.md).
MIRFLICKR_LABELS = [
    "animals",
    "baby",
    "bird",
    "car",
    "clouds",
    "dog",
    "female",
    "flower",
    "food",
    "indoor",
    "lake",
    "male",
    "night",
    "people",
    "plant_life",
    "portrait",
    "river",
    "sea",
    "sky",
    "structures",
    "sunset",
    "transport",
    "tree",
    "water",
]


class RawDataError(ValueError):
    """Raw data that cannot be imported (names the file and what is wrong)."""


def run_importer(
    kind: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    vocab_settings: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> Dataset:
    """Import ``src`` with the importer ``kind``, fit the vocabulary on the train split, save to ``out``.

    Args:
        kind: Importer name (see :func:`list_importers`).
        src: Source folder (or CSV file).
        out: Dataset directory to write (atomically; an existing dataset there is replaced).
        vocab_settings: :class:`~phototag.vocab.TagVocabulary` settings (``min_count``, ``max_size``, ...); they
            override the importer's own defaults (``info["vocabulary_defaults"]``, e.g. MIRFLICKR's 0.1 % rule).
        options: Keyword options of the importer (e.g. MIRFLICKR's ``targets``).

    Returns:
        The saved dataset.
    """
    importer = get_importer(kind)
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"Source '{src}' does not exist; give the folder (or CSV file) of the raw {kind} data.")
    dataset = importer(src, **(options or {}))
    if not dataset.split("train"):
        raise RawDataError(
            f"{src}: no training records after import (records per split: {dataset.split_counts()}); "
            "mark some rows split=train."
        )
    vocab = dataset.fit_vocab(**{**dataset.info.get("vocabulary_defaults", {}), **(vocab_settings or {})})
    dataset.info.setdefault("import", {})
    dataset.info["import"]["vocabulary"] = {
        "size": len(vocab),
        "dropped_distinct_tags": vocab.dropped_,
        "settings": vocab.get_params(),
    }
    dataset.save(out)
    return dataset


def _report(records_in: int, records: list[ImageRecord], missing: list[str], **extra: Any) -> dict[str, Any]:
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        log.warning("%d of %d images are missing and were left out:\n  %s", len(missing), records_in, shown)
    return {
        "records_in": records_in,
        "records_out": len(records),
        "missing_files": len(missing),
        "missing_examples": missing[:100],
        **extra,
    }


# --- Corel5k --------------------------------------------------------------------------------------------------------
def _load_mat(path: Path, variable: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        data = loadmat(path)
    except Exception as err:
        raise RawDataError(f"{path}: cannot read the MATLAB file ({err}).") from None
    if variable not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise RawDataError(f"{path}: variable '{variable}' not found (variables: {found}).")
    return np.asarray(data[variable])


@register_importer("corel5k")
def import_corel5k(src: Path) -> Dataset:
    """Corel5k: ``corel5k_words.txt``, ``corel5k_{train,test}_list.txt`` + ``_annot.mat`` (either split or both)."""
    words_file = src / "corel5k_words.txt"
    if not words_file.is_file():
        raise RawDataError(f"{words_file} is missing: '{src}' is not a Corel5k folder.")
    words = [w.strip() for w in words_file.read_text().splitlines() if w.strip()]
    records: list[ImageRecord] = []
    missing: list[str] = []
    records_in = 0
    found_splits = []
    for split, variable in (("train", "annot1"), ("test", "annot2")):
        list_file, annot_file = src / f"corel5k_{split}_list.txt", src / f"corel5k_{split}_annot.mat"
        if not list_file.is_file():
            continue
        if not annot_file.is_file():
            raise RawDataError(f"{list_file} is there but {annot_file} is missing.")
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        annot = _load_mat(annot_file, variable)
        if annot.shape != (len(ids), len(words)):
            raise RawDataError(
                f"{annot_file}: '{variable}' has shape {annot.shape}, expected ({len(ids)}, {len(words)}) "
                f"(lines of {list_file.name} × words)."
            )
        found_splits.append(split)
        records_in += len(ids)
        for image_id, row in zip(ids, annot, strict=True):
            file = f"{image_id}.jpeg"
            if not (src / file).is_file():
                missing.append(str(src / file))
                continue
            tags = [words[j] for j in np.flatnonzero(row)]
            records.append(ImageRecord(id=image_id, file=file, tags=tags, split=split))
    if not found_splits:
        raise RawDataError(f"{src}: neither corel5k_train_list.txt nor corel5k_test_list.txt is there.")
    info = {"source": "corel5k", "import": _report(records_in, records, missing, splits_found=found_splits)}
    return Dataset(records, name="corel5k", image_root=src, info=info)


# --- generic CSV ----------------------------------------------------------------------------------------------------
@register_importer("csv")
def import_csv(src: Path) -> Dataset:
    """CSV with columns ``file,tags`` and optional ``user_tags``, ``split``, ``id``; ``file`` relative to the CSV.

    Every ``file`` must stay inside the CSV's folder (no ``../`` escapes, no absolute paths elsewhere), each photo is
    listed once, and a cell may not span lines or hold control characters: such rows are refused with the line
    number rather than imported as something the user did not mean.
    """
    if src.is_dir():
        raise RawDataError(f"'{src}' is a folder; `phototag import csv` takes the CSV file itself.")
    try:
        text = src.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise RawDataError(
            f"{src}: not a UTF-8 text file (byte {err.start}: {err.reason}); save it as UTF-8 and import again."
        ) from None
    except OSError as err:
        raise RawDataError(f"{src}: cannot read the file ({err.strerror or err}).") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        numbered = [(reader.line_num, raw) for raw in reader]
    except csv.Error as err:
        raise RawDataError(f"{src} line {reader.line_num}: not valid CSV ({err}).") from None
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "file" not in columns or "tags" not in columns:
        raise RawDataError(
            f"{src}: expected columns 'file,tags' (optional: user_tags, split, id). Got columns {columns or 'none'}."
        )
    root = src.parent
    records: list[ImageRecord] = []
    missing: list[str] = []
    records_in = 0
    seen_ids: set[str] = set()
    seen_files: dict[Path, str] = {}
    for line_no, raw in numbered:
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None and isinstance(v, str)}
        records_in += 1
        _check_csv_cells(src, line_no, row)
        file = row.get("file", "")
        if not file:
            raise RawDataError(f"{src} line {line_no}: the 'file' cell is empty.")
        split = row.get("split") or "train"
        if split not in SPLITS:
            raise RawDataError(f"{src} line {line_no}: split must be one of {SPLITS}. Got {split!r} instead.")
        record_id = row.get("id") or file
        if record_id in seen_ids:
            raise RawDataError(f"{src} line {line_no}: id {record_id!r} appears twice; ids must be unique.")
        seen_ids.add(record_id)
        target = _inside_folder(src, line_no, root, file)
        if target in seen_files:
            raise RawDataError(
                f"{src} line {line_no}: file {file!r} is the same photo as id {seen_files[target]!r} on an earlier "
                "line; list each photo once (put all its tags on one line)."
            )
        seen_files[target] = record_id
        if not (root / file).is_file():
            missing.append(str(root / file))
            continue
        records.append(
            ImageRecord(
                id=record_id,
                file=file,
                tags=split_tag_string(row.get("tags")),
                user_tags=split_tag_string(row.get("user_tags")),
                split=split,
            )
        )
    if records_in == 0:
        raise RawDataError(f"{src}: the CSV has a header but no rows.")
    if not records:
        raise RawDataError(f"{src}: none of the {records_in} image files exist (first: {missing[0]}).")
    untagged = sum(not r.tags for r in records)
    if untagged:
        log.warning("%s: %d of %d images have an empty tag list (kept as negatives).", src, untagged, len(records))
    info = {"source": "csv", "csv": str(src.resolve()), "import": _report(records_in, records, missing)}
    info["import"]["records_without_tags"] = untagged
    return Dataset(records, name=src.stem, image_root=root, info=info)


def _check_csv_cells(src: Path, line_no: int, row: dict[str, str]) -> None:
    """Refuse cells spanning lines (a quoted newline) or holding control characters, naming the line and column."""
    for column, value in row.items():
        if "\n" in value or "\r" in value:
            raise RawDataError(
                f"{src} line {line_no}: the {column!r} cell spans several lines (a quoted line break); "
                "put each photo's cells on one line."
            )
        bad = next((c for c in value if unicodedata.category(c) == "Cc" and c != "\t"), None)
        if bad is not None:
            raise RawDataError(
                f"{src} line {line_no}: the {column!r} cell holds the control character {bad!r}; remove it."
            )


def _inside_folder(src: Path, line_no: int, root: Path, file: str) -> Path:
    """The resolved path of ``file``; refuses one that leaves the CSV's folder (``../`` or an absolute path).

    The check is on the path as written: a link the user placed inside the folder is followed on purpose.
    """
    written = Path(os.path.normpath(os.path.abspath(root / file)))
    if not written.is_relative_to(os.path.abspath(root)):
        raise RawDataError(
            f"{src} line {line_no}: file {file!r} is outside the CSV's folder '{os.path.abspath(root)}'; "
            "give paths relative to the CSV, and keep the photos in its folder or below."
        )
    return written.resolve()


# --- HARRISON -------------------------------------------------------------------------------------------------------
@register_importer("harrison")
def import_harrison(src: Path, *, seed: int = 0) -> Dataset:
    """HARRISON hashtags (no images): ``data_list.txt`` + line-aligned ``tag_list.txt``; seeded 80/10/10 split.

    Each post's hashtags are both its target ``tags`` and its ``user_tags``; ``meta.category`` is the hashtag the
    post was collected under.
    """
    data_file, tag_file = src / "data_list.txt", src / "tag_list.txt"
    for required in (data_file, tag_file):
        if not required.is_file():
            raise RawDataError(f"{required} is missing: '{src}' is not a HARRISON folder.")
    paths = data_file.read_text().splitlines()
    tag_lines = tag_file.read_text().splitlines()
    if len(paths) != len(tag_lines):
        raise RawDataError(f"{data_file} has {len(paths)} lines but {tag_file} has {len(tag_lines)}; they must align.")
    splits = seeded_split(len(paths), seed=seed)
    records = []
    for i, (path, line, split) in enumerate(zip(paths, tag_lines, splits, strict=True)):
        tags = split_tag_string(line)
        parts = path.strip().split("/")
        meta = {"source_path": path.strip(), "category": parts[-2] if len(parts) >= 2 else ""}
        records.append(
            ImageRecord(id=f"harrison-{i:06d}", file=None, tags=tags, user_tags=tags, split=split, meta=meta)
        )
    info = {
        "source": "harrison",
        "split": {"seed": seed, "fractions": [0.8, 0.1, 0.1]},
        "import": _report(len(paths), records, []),
    }
    return Dataset(records, name="harrison", info=info)


# --- MIRFLICKR-25K --------------------------------------------------------------------------------------------------
#: ``--targets`` choices of the MIRFLICKR importer (photo layout).
MIRFLICKR_TARGETS = ("user-tags", "labels", "labels-r1")
#: Which WordNet parent words `import mirflickr` adds to the user tags (see :func:`import_mirflickr`).
PARENT_CHOICES = ("labels", "all", "none")
#: Label-list kinds kept in each record's ``meta`` (``phototag evaluate --against``): meta key per kind.
LABEL_KINDS = {"labels": "labels", "labels-r1": "labels_r1"}


def _image_number(path: Path) -> int:
    return int(path.stem[2:]) if path.stem[2:].isdigit() else -1


def read_label_lists(folder: Path) -> dict[str, dict[str, set[int]]]:
    """MIRFLICKR's annotation folder → ``{"labels": {name: image numbers}, "labels-r1": {name: ...}}``.

    ``NAME.txt`` are the potential labels, ``NAME_r1.txt`` the relevant ones (listed under ``NAME``); other files
    (the distribution's README) are ignored.
    """
    lists: dict[str, dict[str, set[int]]] = {"labels": {}, "labels-r1": {}}
    for file in sorted(folder.glob("*.txt")):
        if file.stem.lower().startswith("readme"):
            continue
        kind, name = ("labels-r1", file.stem[:-3]) if file.stem.endswith("_r1") else ("labels", file.stem)
        numbers: set[int] = set()
        for line_no, line in enumerate(file.read_text().splitlines(), 1):
            if line.strip():
                if not line.strip().isdigit():
                    raise RawDataError(f"{file} line {line_no}: expected an image number. Got {line.strip()!r}.")
                numbers.add(int(line))
        lists[kind][name] = numbers
    if not lists["labels"] and not lists["labels-r1"]:
        raise RawDataError(f"{folder}: no label lists (NAME.txt, NAME_r1.txt) found.")
    return lists


def refinement_paper_tags(
    tags: Sequence[str],
    *,
    aliases: dict[str, str] | None = None,
    lexicon: bool = True,
    parents: bool | Collection[str] = False,
) -> list[str]:
    """User tags as the refinement paper prepared them: lemmatised, kept only if an English word.

    The lexicon is simplemma's English dictionary (offline, ships with the package; the paper used WordNet, which
    has no offline copy on PyPI). ``aliases`` maps a lemma to the name it is kept under (the importer maps
    ``cloud`` to the label name ``clouds``, so a label is scored by the tag of the same name). With ``parents``,
    each kept tag's parent words from WordNet follow (:func:`~phototag.vocab.with_parent_words`: girl → woman,
    adult, female), which the paper did not do; ``parents`` may also be the collection of parent words allowed (after
    ``aliases``), so that only those are added.

    Example:
        >>> refinement_paper_tags(["Dogs", "nikond80", "clouds", "2007"], aliases={"cloud": "clouds"})
        ['dog', 'clouds']
        >>> refinement_paper_tags(["Girls", "dog"], parents=True)
        ['girl', 'dog', 'woman', 'adult', 'female', 'canine', 'carnivore', 'animal']
        >>> refinement_paper_tags(["Girls", "dog"], parents={"female", "animals"}, aliases={"animal": "animals"})
        ['girl', 'dog', 'female', 'animals']
    """
    from .vocab import is_english_word, with_parent_words

    out: list[str] = []
    for raw in tags:
        lemma = normalize_tag(raw, lemmatize=True)
        if not lemma or (lexicon and not is_english_word(lemma)):
            continue
        lemma = (aliases or {}).get(lemma, lemma)
        if lemma not in out:
            out.append(lemma)
    if parents:
        own = len(out)
        expanded = [(aliases or {}).get(tag, tag) for tag in with_parent_words(out)]
        allowed = expanded[own:] if parents is True else [tag for tag in expanded[own:] if tag in parents]
        out = list(dict.fromkeys(expanded[:own] + allowed))
    return out


@register_importer("mirflickr")
def import_mirflickr(
    src: Path,
    *,
    seed: int = 0,
    layout: str = "auto",
    targets: str = "user-tags",
    min_fraction: float = 0.001,
    max_images: int | None = None,
    clean: str = "default",
    parents: str | bool = "labels",
) -> Dataset:
    """MIRFLICKR-25K: the photo layout (images, user tags, label lists) or the tag-matrix files.

    Photo layout (the original distribution's): ``mirflickr/imN.jpg``, ``mirflickr/meta/tags/tagsN.txt`` and
    ``mirflickr25k_annotations_v080/`` (``NAME.txt`` / ``NAME_r1.txt``). Each record keeps the raw user tags as
    ``user_tags`` and both label lists in ``meta`` (``labels``, ``labels_r1``: the names; ``image_number``), so
    any model can be scored on them (``phototag evaluate --against labels-r1``). Targets (``targets``):

    - ``"user-tags"`` (default): the refinement paper's preprocessing (:func:`refinement_paper_tags`), then the
      tags' parent words from WordNet that name one of the 38 labels (``parents="labels"``, the default: girl →
      female, boy → male, puppy → dog, daisy → flower; ``"all"`` adds every parent word: girl → woman, adult,
      female), and the vocabulary keeps tags on at least ``min_fraction`` of the training photos (0.1 %);
    - ``"labels"``: the 24 potential labels; ``"labels-r1"``: the 14 relevant labels.

    With ``clean="paper-cnn"`` (``phototag import mirflickr --clean paper-cnn``) user-tag targets are the raw tags,
    only normalised (:func:`~phototag.vocab.normalize_tag`: no lemmas, no lexicon), for the VGG16-tagger paper's
    cleaning, which the vocabulary then applies (no tag with a digit or a camera brand, tags on > 100 photos).

    Matrix layout: ``mirflickr25k-yall.mat`` user-tag bag + ``-lall.mat`` 24 labels (no images): targets are the
    labels, user tags the bag's columns named ``utag0000`` ... (the matrices ship no tag names).

    Args:
        src: The MIRFLICKR-25K folder.
        seed: Seed of the 80/10/10 train/val/test split.
        layout: ``"photos"``, ``"matrices"`` or ``"auto"`` (photos when ``src/mirflickr`` is there).
        targets: See above (photo layout only).
        min_fraction: Vocabulary threshold for ``"user-tags"`` targets, as a fraction of training photos.
        max_images: Import only the photos with the lowest numbers (a quick subset).
        clean: ``"default"`` or ``"paper-cnn"`` (see above).
        parents: Which parent words of the user tags to add (``"user-tags"`` targets with ``clean="default"``
            only): ``"labels"`` (those that name a label), ``"all"`` or ``"none"`` (the refinement paper's
            preprocessing exactly); ``True`` / ``False`` mean ``"all"`` / ``"none"``.
    """
    if clean not in ("default", "paper-cnn"):
        raise ValueError(f"clean must be 'default' or 'paper-cnn'. Got {clean!r} instead.")
    parents = {True: "all", False: "none"}.get(parents, parents) if isinstance(parents, bool) else parents
    if parents not in PARENT_CHOICES:
        raise ValueError(f"parents must be one of {', '.join(PARENT_CHOICES)}. Got {parents!r} instead.")
    if layout not in ("auto", "photos", "matrices"):
        raise ValueError(f"layout must be 'auto', 'photos' or 'matrices'. Got {layout!r} instead.")
    if layout == "matrices" or (layout == "auto" and not (src / "mirflickr").is_dir()):
        return _import_mirflickr_matrices(src, seed=seed)
    if targets not in MIRFLICKR_TARGETS:
        raise ValueError(f"targets must be one of {', '.join(MIRFLICKR_TARGETS)}. Got {targets!r} instead.")
    photo_dir, annotation_dir = src / "mirflickr", src / "mirflickr25k_annotations_v080"
    tag_dir = photo_dir / "meta" / "tags"
    for required in (photo_dir, tag_dir, annotation_dir):
        if not required.is_dir():
            raise RawDataError(f"{required} is missing: '{src}' is not a MIRFLICKR-25K folder (photo layout).")
    labels = read_label_lists(annotation_dir)
    label_names = {kind: sorted(lists) for kind, lists in labels.items()}
    numbers = sorted(n for n in (_image_number(p) for p in photo_dir.glob("im*.jpg")) if n > 0)
    tag_numbers = sorted(n for n in (int(p.stem[4:]) for p in tag_dir.glob("tags*.txt") if p.stem[4:].isdigit()))
    if max_images is not None:
        numbers = numbers[:max_images]
        tag_numbers = [n for n in tag_numbers if n <= (numbers or [0])[-1]]
    if not numbers:
        raise RawDataError(f"{photo_dir}: no photos named imN.jpg.")
    photos = set(numbers)
    missing = [str(photo_dir / f"im{n}.jpg") for n in tag_numbers if n not in photos]
    # A label name's lemma (cloud) is kept under the label's own name (clouds), for the same-name protocol.
    aliases = {normalize_tag(name, lemmatize=True): name for names in label_names.values() for name in names}
    label_words = {name for names in label_names.values() for name in names}
    allowed_parents = {"labels": label_words, "all": True, "none": False}[parents]
    splits = seeded_split(len(numbers), seed=seed)
    records: list[ImageRecord] = []
    no_tag_file = 0
    for number, split in zip(numbers, splits, strict=True):
        tag_file = tag_dir / f"tags{number}.txt"
        if tag_file.is_file():
            user_tags = [t for t in tag_file.read_text(encoding="utf-8", errors="replace").split() if t]
        else:
            no_tag_file += 1
            user_tags = []
        meta = {
            "image_number": number,
            **{key: [n for n in label_names[kind] if number in labels[kind][n]] for kind, key in LABEL_KINDS.items()},
        }
        if targets == "user-tags" and clean == "paper-cnn":
            tags = list(dict.fromkeys(t for t in (normalize_tag(raw) for raw in user_tags) if t))
        elif targets == "user-tags":
            tags = refinement_paper_tags(user_tags, aliases=aliases, parents=allowed_parents)
        else:
            tags = list(meta[LABEL_KINDS[targets]])
        records.append(
            ImageRecord(
                id=f"im{number}",
                file=f"mirflickr/im{number}.jpg",
                tags=tags,
                user_tags=user_tags,
                split=split,
                meta=meta,
            )
        )
    n_train = sum(s == "train" for s in splits)
    info: dict[str, Any] = {
        "source": "mirflickr25k",
        "layout": "photos",
        "targets": targets,
        "label_names": label_names,
        "split": {"seed": seed, "fractions": [0.8, 0.1, 0.1]},
        "import": _report(len(numbers) + len(missing), records, missing, records_without_tag_file=no_tag_file),
    }
    if targets == "user-tags" and clean == "paper-cnn":
        info["preprocessing"] = "VGG16-tagger paper: raw tags normalised; no digit or camera brand, > 100 photos"
    elif targets == "user-tags":
        info["preprocessing"] = "refinement paper: lemmatised, English lexicon (simplemma), >= 0.1% of photos" + (
            {"labels": "; each tag's parent words from WordNet that name a label added",
             "all": "; each tag's parent words from WordNet added", "none": ""}[parents]
        )  # fmt: skip
        info["vocabulary_defaults"] = {"min_count": max(1, math.ceil(min_fraction * n_train))}
    return Dataset(records, name="mirflickr25k", image_root=src, info=info)


def _import_mirflickr_matrices(src: Path, *, seed: int = 0) -> Dataset:
    """The tag-matrix files: ``mirflickr25k-yall.mat`` user-tag bag + ``-lall.mat`` 24 labels (no images)."""
    tag_bag = _load_mat(src / "mirflickr25k-yall.mat", "YAll") if (src / "mirflickr25k-yall.mat").is_file() else None
    if tag_bag is None:
        raise RawDataError(f"{src / 'mirflickr25k-yall.mat'} is missing: '{src}' is not a MIRFLICKR-25K folder.")
    labels_file = src / "mirflickr25k-lall.mat"
    if not labels_file.is_file():
        raise RawDataError(f"{labels_file} is missing: '{src}' is not a MIRFLICKR-25K folder.")
    labels = _load_mat(labels_file, "LAll")
    if labels.shape != (tag_bag.shape[0], len(MIRFLICKR_LABELS)):
        raise RawDataError(
            f"{labels_file}: LAll has shape {labels.shape}, expected ({tag_bag.shape[0]}, {len(MIRFLICKR_LABELS)})."
        )
    splits = seeded_split(len(labels), seed=seed)
    width = len(str(tag_bag.shape[1] - 1))
    records = [
        ImageRecord(
            id=f"mirflickr-{i:05d}",
            file=None,
            tags=[MIRFLICKR_LABELS[j] for j in np.flatnonzero(label_row)],
            user_tags=[f"utag{j:0{width}d}" for j in np.flatnonzero(tag_row)],
            split=split,
        )
        for i, (label_row, tag_row, split) in enumerate(zip(labels, tag_bag, splits, strict=True))
    ]
    info = {
        "source": "mirflickr25k",
        "split": {"seed": seed, "fractions": [0.8, 0.1, 0.1]},
        "layout": "matrices",
        "user_tag_columns": int(tag_bag.shape[1]),
        "import": _report(len(records), records, []),
    }
    return Dataset(records, name="mirflickr25k", info=info)

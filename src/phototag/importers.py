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
import os
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from . import library as _library  # noqa: F401  (registers the "library" importer)
from .data import SPLITS, Dataset, ImageRecord, seeded_split, split_tag_string
from .importer_registry import Importer, get_importer, list_importers, register_importer

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
) -> Dataset:
    """Import ``src`` with the importer ``kind``, fit the vocabulary on the train split, save to ``out``.

    Args:
        kind: Importer name (see :func:`list_importers`).
        src: Source folder (or CSV file).
        out: Dataset directory to write (atomically; an existing dataset there is replaced).
        vocab_settings: :class:`~phototag.vocab.TagVocabulary` settings (``min_count``, ``max_size``, ...).

    Returns:
        The saved dataset.
    """
    importer = get_importer(kind)
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"Source '{src}' does not exist; give the folder (or CSV file) of the raw {kind} data.")
    dataset = importer(src)
    if not dataset.split("train"):
        raise RawDataError(
            f"{src}: no training records after import (records per split: {dataset.split_counts()}); "
            "mark some rows split=train."
        )
    vocab = dataset.fit_vocab(**(vocab_settings or {}))
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
@register_importer("mirflickr")
def import_mirflickr(src: Path, *, seed: int = 0) -> Dataset:
    """MIRFLICKR-25K (no images): ``mirflickr25k-yall.mat`` user-tag bag + ``-lall.mat`` 24 labels.

    Targets are the 24 human labels; user tags are the bag's columns, named ``utag0000`` ... (the source ships no
    tag names). Seeded 80/10/10 split.
    """
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
        "user_tag_columns": int(tag_bag.shape[1]),
        "import": _report(len(records), records, []),
    }
    return Dataset(records, name="mirflickr25k", info=info)

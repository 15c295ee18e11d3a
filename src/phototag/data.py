"""The dataset format every method trains on: a manifest of image records plus the fitted tag vocabulary.

Dataset directory layout (written atomically by :meth:`Dataset.save`; images are never copied, only referenced)::

    DATASET_DIR/dataset.json     format + version, name, image_root, import report, vocabulary settings
    DATASET_DIR/manifest.jsonl   one ImageRecord per line: id, file, tags, user_tags, split, meta
    DATASET_DIR/vocab.json       the TagVocabulary fitted on the train split's target tags

``tags`` are the targets a model learns (Corel5k words, clean labels); ``user_tags`` are the user's own (noisy)
tags, an input for the contextual tagger and the noisy starting point of refinement. Tag-only datasets (HARRISON,
MIRFLICKR-25K without images) have ``file = None``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import atomic_directory
from .vocab import TagVocabulary

DATASET_FORMAT = "phototag-dataset"
DATASET_FORMAT_VERSION = 1
#: ``unlabeled``: photos without tags (e.g. a photo library's untagged photos); never trained or evaluated on.
SPLITS = ("train", "val", "test", "unlabeled")


class DatasetFormatError(ValueError):
    """A dataset directory is missing, damaged or from an incompatible phototag version."""


@dataclass
class ImageRecord:
    """One photo of a dataset.

    Attributes:
        id: Unique id within the dataset.
        file: Image path relative to the dataset's ``image_root`` (``None`` for tag-only data).
        tags: Target tags (ground truth for training and evaluation).
        user_tags: The user's own tags (input for contextual methods, noisy tags for refinement).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"unlabeled"``.
        meta: Free-form extra fields from the source (folder, original path, ...).
    """

    id: str
    file: str | None
    tags: list[str]
    user_tags: list[str] = field(default_factory=list)
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"Record '{self.id}': split must be one of {SPLITS}. Got {self.split!r} instead.")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not data["meta"]:
            del data["meta"]
        return data


class Dataset:
    """A list of :class:`ImageRecord` with its image root, import report and vocabulary.

    Args:
        records: The photos.
        name: Dataset name (shown in reports).
        image_root: Folder the records' ``file`` paths are relative to (``None`` for tag-only data).
        info: Import report and provenance (saved in ``dataset.json``).
        vocab: A fitted :class:`TagVocabulary`; ``None`` until :meth:`fit_vocab`.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        *,
        name: str,
        image_root: str | os.PathLike | None = None,
        info: dict[str, Any] | None = None,
        vocab: TagVocabulary | None = None,
    ):
        self.records = list(records)
        self.name = name
        self.image_root = Path(image_root) if image_root is not None else None
        self.info = dict(info or {})
        self.vocab = vocab
        self.root: Path | None = None
        ids = Counter(r.id for r in self.records)
        duplicates = [i for i, c in ids.items() if c > 1]
        if duplicates:
            raise ValueError(f"Dataset '{name}' has duplicate record ids, e.g. {duplicates[:5]}; ids must be unique.")

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {len(self.records)} records, {self.split_counts()})"

    # --- access -------------------------------------------------------------------------------------------------
    def split(self, name: str) -> list[ImageRecord]:
        """Records of one split, in manifest order."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}. Got {name!r} instead.")
        return [r for r in self.records if r.split == name]

    def split_counts(self) -> dict[str, int]:
        counts = Counter(r.split for r in self.records)
        # "unlabeled" only where there are such records, so other datasets' counts read as before
        return {s: counts.get(s, 0) for s in SPLITS if s != "unlabeled" or counts.get(s)}

    def train_val(self, *, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[ImageRecord], list[ImageRecord]]:
        """Training and validation records: split ``val`` if present, else a seeded carve of ``train``.

        Raises:
            ValueError: ``val_fraction`` is not in [0, 1).
        """
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1). Got {val_fraction} instead.")
        train, val = self.split("train"), self.split("val")
        if val or val_fraction == 0 or len(train) < 10:
            return train, val
        order = np.random.default_rng(seed).permutation(len(train))
        n_val = max(1, int(round(val_fraction * len(train))))
        held = set(order[:n_val].tolist())
        return [r for i, r in enumerate(train) if i not in held], [r for i, r in enumerate(train) if i in held]

    def carve_test(self, n_test: int, *, seed: int = 0, name: str | None = None) -> Dataset:
        """A copy whose ``test`` split is ``n_test`` seeded-random ``train`` records (vocabulary refitted on the rest).

        For data shipped without its test split (e.g. the Corel5k train split alone): the held-out photos are never
        seen in training, nor in the vocabulary.
        """
        train = self.split("train")
        if not 0 < n_test < len(train):
            raise ValueError(f"n_test must be between 1 and {len(train) - 1}. Got {n_test} instead.")
        chosen = {train[i].id for i in np.random.default_rng(seed).permutation(len(train))[:n_test].tolist()}
        records = [replace(r, split="test") if r.id in chosen else replace(r) for r in self.records]
        info = {**self.info, "carved_test": {"n": n_test, "seed": seed, "from": "train"}}
        carved = Dataset(
            records, name=name or f"{self.name}-test{n_test}-seed{seed}", image_root=self.image_root, info=info
        )
        carved.fit_vocab(**(self.vocab.get_params() if self.vocab is not None else {}))
        return carved

    def has_images(self) -> bool:
        return self.image_root is not None and any(r.file is not None for r in self.records)

    def image_path(self, record: ImageRecord) -> Path:
        """Absolute path of a record's image.

        Raises:
            ValueError: The dataset has no images (tag-only data).
        """
        if record.file is None or self.image_root is None:
            raise ValueError(f"Dataset '{self.name}' has no image for record '{record.id}' (tag-only data).")
        return self.image_root / record.file

    def target_matrix(self, records: Sequence[ImageRecord] | None = None) -> np.ndarray:
        """0/1 targets ``(n_records, n_tags)`` of ``records`` (default: all) in the vocabulary's column order."""
        if self.vocab is None:
            raise ValueError(f"Dataset '{self.name}' has no vocabulary yet; call fit_vocab().")
        return self.vocab.transform(r.tags for r in (self.records if records is None else records))

    # --- vocabulary ---------------------------------------------------------------------------------------------
    def fit_vocab(self, **settings: Any) -> TagVocabulary:
        """Fit the target vocabulary on the train split's tags (settings: see :class:`TagVocabulary`)."""
        params = {**(self.vocab.get_params() if self.vocab is not None else {}), **settings}
        train = self.split("train")
        if not train:
            raise ValueError(f"Dataset '{self.name}' has no 'train' records to fit a vocabulary on.")
        self.vocab = TagVocabulary(**params).fit(r.tags for r in train)
        return self.vocab

    def summary(self) -> dict[str, Any]:
        """Counts shown after import: records per split, tags, vocabulary size, tags per image."""
        n_tags = [len(r.tags) for r in self.records]
        return {
            "records": len(self.records),
            "splits": self.split_counts(),
            "images": self.has_images(),
            "vocabulary": len(self.vocab) if self.vocab is not None else None,
            "tags_per_record": round(float(np.mean(n_tags)), 3) if n_tags else 0.0,
            "records_without_tags": int(sum(n == 0 for n in n_tags)),
            "records_with_user_tags": int(sum(bool(r.user_tags) for r in self.records)),
        }

    # --- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the dataset directory atomically (built in a temporary sibling, then renamed into place).

        An existing phototag dataset at ``path`` is replaced; any other non-empty folder is refused.
        """
        if self.vocab is None:
            self.fit_vocab()
        header = {
            "format": DATASET_FORMAT,
            "format_version": DATASET_FORMAT_VERSION,
            "name": self.name,
            "image_root": str(self.image_root.resolve()) if self.image_root is not None else None,
            "summary": self.summary(),
            "info": self.info,
        }
        path = Path(path)
        with atomic_directory(path, marker="dataset.json", what="dataset") as tmp:
            with open(tmp / "manifest.jsonl", "w", encoding="utf-8") as handle:
                for record in self.records:
                    handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            self.vocab.save(tmp / "vocab.json")
            (tmp / "dataset.json").write_text(json.dumps(header, indent=2, ensure_ascii=False, default=str))
        self.root = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Dataset:
        """Read a dataset directory written by :meth:`save` (or ``phototag import``).

        Raises:
            DatasetFormatError: Missing or damaged files, or another format version.
        """
        path = Path(path)
        header_file = path / "dataset.json"
        if not path.is_dir():
            raise DatasetFormatError(f"Dataset directory '{path}' does not exist. Create one with `phototag import`.")
        if not header_file.is_file():
            raise DatasetFormatError(f"'{path}' is not a phototag dataset (dataset.json is missing).")
        try:
            header = json.loads(header_file.read_text())
        except json.JSONDecodeError as err:
            raise DatasetFormatError(f"{header_file} is damaged ({err}); re-import the dataset.") from None
        if header.get("format") != DATASET_FORMAT or header.get("format_version") != DATASET_FORMAT_VERSION:
            raise DatasetFormatError(
                f"'{path}' has dataset format {header.get('format')!r} version {header.get('format_version')!r}; "
                f"this phototag reads {DATASET_FORMAT!r} version {DATASET_FORMAT_VERSION}. Re-import the dataset."
            )
        manifest = path / "manifest.jsonl"
        if not manifest.is_file():
            raise DatasetFormatError(f"{manifest} is missing; re-import the dataset.")
        records = []
        with open(manifest, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    records.append(ImageRecord(**json.loads(line)))
                except (json.JSONDecodeError, TypeError) as err:
                    raise DatasetFormatError(
                        f"{manifest} line {line_no} is damaged ({err}); re-import the dataset."
                    ) from None
        vocab = TagVocabulary.load(path / "vocab.json")
        dataset = cls(records, name=header["name"], image_root=header.get("image_root"), info=header.get("info"))
        dataset.vocab = vocab
        dataset.root = path
        return dataset


def split_tag_string(text: str | None) -> list[str]:
    """Tags of a space-separated cell (``+`` or ``%20`` inside a tag stand for a space, decoded later)."""
    return [t for t in (text or "").split() if t]


def seeded_split(n: int, *, fractions: tuple[float, float] = (0.8, 0.1), seed: int = 0) -> list[str]:
    """A reproducible train/val/test assignment of ``n`` items (the rest after train and val is test)."""
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    splits = ["test"] * n
    for rank, i in enumerate(order.tolist()):
        splits[i] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return splits

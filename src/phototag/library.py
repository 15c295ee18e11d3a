"""Your own photo library: find its photos, read the keywords you gave them, import them as a dataset.

``phototag import library DIR OUT`` learns *your* keywords. A folder scan finds every photo (JPEG, PNG, TIFF, WebP,
HEIC/AVIF, camera raw) and names every other file it leaves out, with the reason. Keywords come from:

- XMP sidecars: ``photo.jpg.xmp`` (digiKam, darktable) and ``photo.xmp`` (Lightroom, Capture One), read with the
  standard library;
- the XMP embedded in the photo: ``dc:subject``, ``lr:hierarchicalSubject``, ``digiKam:TagsList``;
- IPTC ``Keywords``;

the embedded ones through one exiftool process for the whole run (:class:`~phototag.exiftool.ExifTool`). A
hierarchical keyword (``animal|bird|eagle``, digiKam's ``animal/bird/eagle``) gives its leaf (``eagle``) as the tag,
its path kept in the record's ``meta["keyword_paths"]``; keywords are de-duplicated ignoring case. Keywords phototag
wrote itself (listed in its provenance record, see :mod:`phototag.xmp`) are never labels.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import Dataset, ImageRecord
from .images import IMAGE_EXTENSIONS
from .importer_registry import register_importer
from .xmp import XmpError, XmpPacket, read_embedded

if TYPE_CHECKING:
    from .exiftool import ExifTool

log = logging.getLogger(__name__)

#: Where a keyword was found.
KEYWORD_SOURCES = ("sidecar", "xmp", "iptc")
#: Files exiftool reads per command (bounded output, and one bad file costs little).
EXIFTOOL_BATCH = 200
#: A sidecar's temporary file (``.photo.jpg.xmp.k3j9_x2a``, see ``xmp._atomic_write_bytes``) left by a killed run.
_TEMPORARY_SIDECAR = re.compile(r"^\..+\.xmp\.[a-z0-9_]{8}$", re.IGNORECASE)
LEFTOVER = "unfinished sidecar of an interrupted run"


@dataclass
class LibraryScan:
    """The files under a library folder.

    Attributes:
        photos: Photo files, sorted.
        sidecars: The XMP sidecars of each photo (``photo.jpg.xmp`` first, then ``photo.xmp``).
        skipped: Files (or hidden folders) left out, by reason.
    """

    photos: list[Path] = field(default_factory=list)
    sidecars: dict[Path, list[Path]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def describe_skipped(self, limit: int = 5) -> str:
        """``3 file(s) skipped: not a photo (.txt): a.txt, b.txt; ...``"""
        if not self.skipped:
            return "no file skipped"
        parts = []
        for reason, files in sorted(self.skipped.items()):
            shown = ", ".join(files[:limit]) + (f" and {len(files) - limit} more" if len(files) > limit else "")
            parts.append(f"{reason} ({len(files)}): {shown}")
        return f"{self.n_skipped} file(s) skipped: " + "; ".join(parts)


def scan_library(paths: Iterable[str | os.PathLike]) -> LibraryScan:
    """Find the photos under ``paths`` (files and folders, recursively), their sidecars, and what was left out.

    Hidden files and folders (``.thumbnails``, ``.dtrash``, phototag's own temporary files) and files that are
    not photos are skipped and named in :attr:`LibraryScan.skipped`; nothing is dropped silently.

    Raises:
        FileNotFoundError: A path does not exist.
    """
    scan = LibraryScan()
    xmp_files: dict[Path, dict[str, Path]] = defaultdict(dict)
    candidates: list[Path] = []
    for raw in paths:
        root = Path(raw)
        if root.is_file():
            candidates.append(root)
            xmp_files[root.parent].update(_xmp_in(root.parent))
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"No such file or folder: '{root}'. Give photo files or folders of photos.")
        for folder, dirs, files in os.walk(root):
            folder_path = Path(folder)
            for name in sorted(dirs):
                if name.startswith(".") or name == "@eaDir":
                    scan.skipped["hidden or system folder"].append(str(folder_path / name))
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "@eaDir")
            for name in sorted(files):
                path = folder_path / name
                if _TEMPORARY_SIDECAR.match(name):
                    scan.skipped[LEFTOVER].append(str(path))
                elif name.startswith("."):
                    scan.skipped["hidden file"].append(str(path))
                elif path.suffix.lower() == ".xmp":
                    xmp_files[folder_path][name.lower()] = path
                else:
                    candidates.append(path)
    used: set[Path] = set()
    seen: set[Path] = set()
    for path in candidates:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            scan.skipped[f"not a photo format phototag reads ({path.suffix.lower() or 'no extension'})"].append(
                str(path)
            )
            continue
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        scan.photos.append(path)
        in_folder = xmp_files.get(path.parent, {})
        found = [in_folder[n] for n in (path.name.lower() + ".xmp", path.stem.lower() + ".xmp") if n in in_folder]
        if found:
            scan.sidecars[path] = found
            used.update(found)
    for folder in xmp_files.values():
        for sidecar in folder.values():
            if sidecar not in used and any(str(sidecar).startswith(str(Path(r))) for r in paths):
                scan.skipped["sidecar without its photo"].append(str(sidecar))
    scan.skipped = dict(scan.skipped)
    return scan


def _xmp_in(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.suffix.lower() == ".xmp" and p.is_file()}


@dataclass
class PhotoKeywords:
    """The owner's keywords of one photo.

    Attributes:
        keywords: De-duplicated (ignoring case), phototag's own left out.
        paths: Keyword → its hierarchical path (``animal|bird|eagle``), for keywords that came with one.
        sources: Which of :data:`KEYWORD_SOURCES` gave at least one keyword.
    """

    keywords: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def add(self, source: str, keywords: Sequence[str], paths: dict[str, str] | None = None) -> None:
        known = {k.casefold() for k in self.keywords}
        if keywords and source not in self.sources:
            self.sources.append(source)
        for keyword in keywords:
            if keyword.casefold() not in known:
                known.add(keyword.casefold())
                self.keywords.append(keyword)
        for keyword, path in (paths or {}).items():
            self.paths.setdefault(keyword, path)


def read_library_keywords(
    scan: LibraryScan, *, exiftool: ExifTool | None = None, embedded: bool = True
) -> tuple[dict[Path, PhotoKeywords], list[tuple[str, str]]]:
    """The owner's keywords of every photo of ``scan``.

    Args:
        scan: From :func:`scan_library`.
        exiftool: A running :class:`~phototag.exiftool.ExifTool` (one is started when ``None`` and ``embedded``).
        embedded: Also read the keywords inside the photos (needs exiftool); ``False`` reads sidecars only.

    Returns:
        ``(keywords, unreadable)``: keywords per readable photo, and ``(path, reason)`` per photo or sidecar that
        could not be read (such photos have no entry).
    """
    if embedded and exiftool is None:
        from .exiftool import ExifTool

        with ExifTool() as running:
            return read_library_keywords(scan, exiftool=running)
    result: dict[Path, PhotoKeywords] = {}
    unreadable: list[tuple[str, str]] = []
    for photo in scan.photos:
        entry = PhotoKeywords()
        try:
            for sidecar in scan.sidecars.get(photo, []):
                packet = XmpPacket.parse(sidecar.read_bytes(), source=str(sidecar))
                entry.add("sidecar", *packet.user_keywords())
        except (XmpError, OSError) as err:
            unreadable.append((str(photo), str(err)))
            continue
        result[photo] = entry
    if not embedded:
        return result, unreadable
    from .exiftool import safe_file_arg

    photos = list(result)
    for start in range(0, len(photos), EXIFTOOL_BATCH):
        batch = photos[start : start + EXIFTOOL_BATCH]
        found, errors = read_embedded(batch, exiftool)
        for photo in batch:
            key = safe_file_arg(photo)
            if key in errors:
                unreadable.append((str(photo), f"cannot read the file's metadata ({errors[key]})"))
                del result[photo]
                continue
            meta = found.get(key)
            if meta is None:
                continue
            if meta.problem is not None:
                unreadable.append((str(photo), meta.problem))
                del result[photo]
                continue
            claimed: set[str] = set()
            if meta.packet is not None:
                try:
                    packet = XmpPacket.parse(meta.packet, source=str(photo))
                except XmpError as err:
                    unreadable.append((str(photo), str(err)))
                    del result[photo]
                    continue
                result[photo].add("xmp", *packet.user_keywords())
                claimed = {k.casefold() for k in packet.phototag_keywords}
            iptc = [k for k in meta.iptc_keywords if k.casefold() not in claimed]
            result[photo].add("iptc", iptc)
    return result, unreadable


def library_report(
    scan: LibraryScan, keywords: dict[Path, PhotoKeywords], unreadable: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """The import report: photos per keyword source, untagged photos, unreadable files, skipped files by reason."""
    per_source = Counter(source for entry in keywords.values() for source in entry.sources)
    return {
        "photos_found": len(scan.photos),
        "photos_with_keywords": sum(bool(e.keywords) for e in keywords.values()),
        "photos_without_keywords": sum(not e.keywords for e in keywords.values()),
        "photos_per_keyword_source": {s: per_source.get(s, 0) for s in KEYWORD_SOURCES},
        "photos_with_hierarchical_keywords": sum(bool(e.paths) for e in keywords.values()),
        "sidecars_read": sum(len(v) for v in scan.sidecars.values()),
        "unreadable": [{"path": p, "reason": r} for p, r in unreadable],
        "skipped": {reason: {"count": len(files), "files": files} for reason, files in sorted(scan.skipped.items())},
        "skipped_total": scan.n_skipped,
    }


@register_importer("library")
def import_library(src: Path) -> Dataset:
    """A photo library folder: photos with keywords are labelled (``train``), the others go to ``unlabeled``.

    Record ids and files are the photos' paths relative to ``src``; ``meta`` keeps where the keywords came from
    (``keyword_sources``) and hierarchical paths (``keyword_paths``).
    """
    if not src.is_dir():
        raise ValueError(f"'{src}' is not a folder; `phototag import library` takes the folder of your photos.")
    scan = scan_library([src])
    keywords, unreadable = read_library_keywords(scan)
    records = []
    for photo, entry in keywords.items():
        relative = photo.relative_to(src).as_posix()
        meta: dict[str, Any] = {}
        if entry.sources:
            meta["keyword_sources"] = entry.sources
        if entry.paths:
            meta["keyword_paths"] = entry.paths
        split = "train" if entry.keywords else "unlabeled"
        records.append(ImageRecord(id=relative, file=relative, tags=entry.keywords, split=split, meta=meta))
    report = library_report(scan, keywords, unreadable)
    if unreadable:
        shown = "\n  ".join(f"{p}: {r}" for p, r in unreadable[:20])
        log.warning("%d file(s) could not be read and were left out:\n  %s", len(unreadable), shown)
    if scan.skipped:
        log.warning("%s", scan.describe_skipped())
    info = {
        "source": "library",
        "library": str(src.resolve()),
        "import": {"records_in": len(scan.photos), "records_out": len(records), **report},
    }
    return Dataset(records, name=src.resolve().name or "library", image_root=src, info=info)


def describe_import(info: dict[str, Any]) -> str:
    """A few lines for the terminal from a library dataset's import report."""
    report = info["import"]
    sources = ", ".join(f"{source} {count}" for source, count in report["photos_per_keyword_source"].items())
    lines = [
        f"{report['photos_found']} photo(s): {report['photos_with_keywords']} with your keywords "
        f"(photos per source: {sources}), {report['photos_without_keywords']} without (split 'unlabeled')",
        f"{len(report['unreadable'])} unreadable, {report['skipped_total']} file(s) skipped "
        "(listed in dataset.json under info.import)",
    ]
    return "\n".join(lines)


# --- incremental tagging ----------------------------------------------------------------------------------------
@dataclass
class TagRunSummary:
    """What ``phototag tag DIR --write ...`` did.

    Attributes:
        written: Files written (sidecars or photos).
        unchanged: Photos whose content and model were unchanged (nothing read or written), or whose keywords
            came out the same.
        skipped: Photos left alone because they carry your keywords (``untagged_only``), and files the scan
            left out (``scan.skipped``).
        failed: ``(path, reason)``: photos the model could not read (their keywords are kept as they were) and
            metadata that could not be read or written.
        changes: The keyword changes made (or that would be, in a dry run).
    """

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    changes: list = field(default_factory=list)
    scan: LibraryScan | None = None

    def describe(self) -> str:
        n_scan = self.scan.n_skipped if self.scan is not None else 0
        return (
            f"written {len(self.written)}, unchanged {len(self.unchanged)}, "
            f"skipped {len(self.skipped) + n_scan} ({len(self.skipped)} with your keywords, {n_scan} not photos), "
            f"failed {len(self.failed)}"
        )


def model_fingerprint(model, **settings: Any) -> str:
    """A hash of the model's files (or its identity when it has none) and the settings that shape its keywords."""
    import hashlib
    import json

    from .xmp import model_identity

    digest = hashlib.sha256()
    if model.path is not None and Path(model.path).is_dir():
        for file in sorted(p for p in Path(model.path).rglob("*") if p.is_file()):
            digest.update(file.relative_to(model.path).as_posix().encode())
            with open(file, "rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    else:
        digest.update(model_identity(model).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def tag_library(
    model,
    paths: Sequence[str | os.PathLike],
    *,
    mode: str = "xmp",
    naming: str = "auto",
    parent: str | None = None,
    catalog: str | os.PathLike | None = None,
    untagged_only: bool = False,
    force: bool = False,
    dry_run: bool = False,
    top_k: int | None = None,
    threshold: float | None = None,
    balanced: bool | None = None,
    checkpoint_every: int = 64,
    options=None,
    finish: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    finish_key: str | None = None,
) -> TagRunSummary:
    """Tag the photos under ``paths`` incrementally, writing keywords (``mode``: ``xmp`` sidecars or ``embedded``).

    A catalogue (:class:`~phototag.catalog.TagCatalog`) remembers each photo's size, modification time, content
    hash, the model fingerprint and the keywords written. A photo whose content and model are unchanged is neither
    scored nor written (its sidecar keeps its bytes and modification time); a changed photo, or every photo after
    the model (or a setting that shapes the keywords) changed, is re-tagged. Work is done and recorded in chunks of
    ``checkpoint_every`` photos, each file written atomically, so a killed run loses nothing finished and the next
    run does the rest. Photos the model cannot read are reported in ``failed`` and keep the keywords they had.

    Args:
        model: A loaded :class:`~phototag.model.TagModel`.
        paths: Photo files and folders (searched recursively, see :func:`scan_library`).
        mode: ``"xmp"`` or ``"embedded"``.
        naming: Sidecar naming (see :func:`phototag.xmp.sidecar_path`).
        parent: Parent of phototag's hierarchical keywords (``auto`` → ``auto|beach``).
        catalog: The catalogue file; ``None`` = ``catalog.sqlite`` in the cache folder.
        untagged_only: Write only to photos that carry none of your keywords.
        force: Re-tag every photo whatever the catalogue says.
        dry_run: Say what would change; write nothing, record nothing.
        top_k, threshold, balanced: The decision rule (see :meth:`~phototag.model.TagModel.predict`).
        finish: Applied to each chunk's predictions before writing (the rules file and the language), and
            ``finish_key`` names what it does, so a change of rules or language re-tags the photos.
        checkpoint_every: Photos scored and written per chunk.
        options: How to run the model (:class:`~phototag.runtime.RunOptions`: device, workers, progress...).
    """
    from .catalog import TagCatalog, file_digest
    from .xmp import WRITE_MODES, model_identity, write_keywords

    if mode not in WRITE_MODES:
        raise ValueError(f"--write must be one of {WRITE_MODES}. Got {mode!r} instead.")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1. Got {checkpoint_every} instead.")
    summary = TagRunSummary(scan=scan_library(paths))
    if not dry_run:  # the real sidecar was never replaced by these, so they hold nothing of value
        for leftover in summary.scan.skipped.pop(LEFTOVER, []):
            Path(leftover).unlink(missing_ok=True)
    photos = list(summary.scan.photos)
    if untagged_only:
        keywords, unreadable = read_library_keywords(summary.scan)
        summary.failed += unreadable
        summary.skipped = [str(p) for p, entry in keywords.items() if entry.keywords]
        photos = [p for p in photos if p in keywords and not keywords[p].keywords]
    settings = {"top_k": top_k, "threshold": threshold, "balanced": balanced, "parent": parent, "naming": naming}
    settings["finish"] = finish_key  # rules and language shape the keywords too
    fingerprint = model_fingerprint(model, mode=mode, **settings)
    identity = model_identity(model)
    with TagCatalog.open(catalog) as book:
        todo: list[Path] = []
        for photo in photos:
            try:
                if force or book.needs_work(photo, mode, fingerprint):
                    todo.append(photo)
                else:
                    summary.unchanged.append(str(photo))
            except OSError as err:  # gone or unreadable since the scan
                summary.failed.append((str(photo), f"cannot read the file ({err.strerror or err})"))

        def record(change) -> None:
            (summary.written if change.written else summary.unchanged).append(str(change.image))
            stat = os.stat(change.image)
            book.record(
                change.image, mode, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                digest=file_digest(change.image), fingerprint=fingerprint, keywords=change.keywords,
                target=change.target,
            )  # fmt: skip

        for start in range(0, len(todo), checkpoint_every):
            chunk = todo[start : start + checkpoint_every]
            predictions, unreadable = model.predict(
                chunk, top_k=top_k, threshold=threshold, balanced=balanced, options=options
            )
            summary.failed += unreadable  # not written: they keep the keywords phototag wrote before
            if finish is not None:
                predictions = finish(predictions)  # rules file, language
            changes, failures = write_keywords(
                predictions,
                mode=mode,
                model=identity,
                naming=naming,
                dry_run=dry_run,
                parent=parent,
                on_written=None if dry_run else record,
            )
            summary.changes += changes
            summary.failed += failures
            if dry_run:
                summary.written += [str(c.image) for c in changes if c.changed]
                summary.unchanged += [str(c.image) for c in changes if not c.changed]
    return summary

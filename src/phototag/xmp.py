"""Write suggested tags into photo libraries' own metadata: XMP sidecars and embedded XMP / IPTC keywords.

Keywords go into ``dc:subject`` (the bag digiKam, darktable, Lightroom and exiftool read as "keywords"). Beside
them, phototag records in its own XMP namespace which keywords *it* added and with which model::

    <rdf:Description xmlns:phototag="http://ns.phototag.dev/xmp/1.0/">
      <phototag:AddedKeywords><rdf:Bag><rdf:li>beach</rdf:li>...</rdf:Bag></phototag:AddedKeywords>
      <phototag:Model>mlp@default_model sha1:0123abcd</phototag:Model>
      <phototag:Tool>phototag 0.1.0</phototag:Tool>
      <phototag:Date>2026-11-23T09:30:00+00:00</phototag:Date>
    </rdf:Description>

Beside ``dc:subject`` the keywords go into ``lr:hierarchicalSubject`` (``auto|beach``) and ``digiKam:TagsList``
(``auto/beach``), under an optional parent, recorded in ``phototag:AddedHierarchicalSubject`` / ``AddedTagsList``.
So re-tagging (e.g. with a newer model) replaces only phototag's keywords, and ``phototag untag`` removes only
them: the user's own keywords are never touched, and a keyword the user already had is never claimed by phototag.
Everything else in the packet (other properties, other namespaces, ``rdf:about``) is kept; the XML is re-serialised,
so whitespace and the place of namespace declarations may change, not the metadata.

Sidecars (``photo.jpg.xmp`` as digiKam / darktable write them, or ``photo.xmp`` as Lightroom does) are edited with
the standard library alone, atomically; a read-only sidecar is refused, a symlinked one is written through its link.
Keywords *embedded* in the image file are written through exiftool (Debian package
``libimage-exiftool-perl``), which rewrites JPEG / TIFF / PNG / WebP / HEIC / raw containers safely: the XMP packet
is edited here and written back whole, and IPTC ``Keywords`` (JPEG / TIFF) get the same additions and removals
(the owner's IPTC-only keywords are copied into ``dc:subject``). One exiftool process serves a whole run
(:class:`phototag.exiftool.ExifTool`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .exiftool import ExifTool

NS_X = "adobe:ns:meta/"
NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_DC = "http://purl.org/dc/elements/1.1/"
NS_PHOTOTAG = "http://ns.phototag.dev/xmp/1.0/"
NS_LR = "http://ns.adobe.com/lightroom/1.0/"
NS_DIGIKAM = "http://www.digikam.org/ns/1.0/"
PREFIXES = {"x": NS_X, "rdf": NS_RDF, "dc": NS_DC, "phototag": NS_PHOTOTAG, "lr": NS_LR, "digiKam": NS_DIGIKAM}

SIDECAR_NAMINGS = ("auto", "full", "stem")
WRITE_MODES = ("xmp", "embedded")
#: Containers exiftool writes IPTC into; elsewhere only the XMP packet is written.
IPTC_SUFFIXES = frozenset({".jpg", ".jpeg", ".tif", ".tiff"})

_XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
_XPACKET_END = '<?xpacket end="w"?>'


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


#: Hierarchical keyword bags phototag writes: (namespace, property), its record of what it added, path separator.
_HIERARCHIES = (
    ((NS_LR, "hierarchicalSubject"), "AddedHierarchicalSubject", "|"),
    ((NS_DIGIKAM, "TagsList"), "AddedTagsList", "/"),
)


class XmpError(ValueError):
    """An XMP packet or sidecar could not be read or written."""


@dataclass
class KeywordChange:
    """What tagging or untagging does (or, in a dry run, would do) to one photo.

    Attributes:
        image: The photo.
        target: The file written: the sidecar, or the image itself for embedded keywords.
        added: Keywords put into ``dc:subject`` now.
        removed: phototag keywords taken out (from an earlier run).
        kept: Suggested keywords the photo already had from its owner (left alone, not claimed by phototag).
        keywords: The resulting ``dc:subject``.
        model: The model recorded (``None`` after untag).
        written: Whether the file was changed (False in a dry run or when nothing changes).
        deleted: An untag removed a sidecar phototag had created and that now holds nothing else.
    """

    image: Path
    target: Path
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    model: str | None = None
    written: bool = False
    deleted: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.deleted)

    def describe(self) -> str:
        """One line: ``photo.jpg.xmp: +beach +sky -tree (kept: sea)``."""
        parts = [f"+{k}" for k in self.added] + [f"-{k}" for k in self.removed]
        text = " ".join(parts) if parts else "no change"
        if self.kept:
            text += f"  (already there: {', '.join(self.kept)})"
        if self.deleted:
            text += "  (sidecar removed)"
        return f"{self.target}: {text}"


# --- packets ----------------------------------------------------------------------------------------------------
@dataclass
class XmpPacket:
    """A parsed XMP packet: the ``x:xmpmeta`` tree, ready to edit and serialise."""

    root: ET.Element
    prefixes: dict[str, str]

    @classmethod
    def parse(cls, text: str | bytes | None, *, source: str = "<xmp>") -> XmpPacket:
        """Parse packet text (with or without the ``<?xpacket?>`` wrapper); ``None`` or empty = a new packet."""
        if isinstance(text, bytes):
            text = _decode_packet(text, source)
        if text is None or not text.strip():
            root = ET.Element(_q(NS_X, "xmpmeta"))
            ET.SubElement(root, _q(NS_RDF, "RDF"))
            return cls(root, {})
        body = re.sub(r"<\?xpacket[^>]*\?>", "", text).strip().lstrip("\ufeff")
        prefixes: dict[str, str] = {}
        try:
            for _, (prefix, uri) in ET.iterparse(_StringReader(body), events=("start-ns",)):
                prefixes.setdefault(prefix, uri)
            root = ET.fromstring(body)
        except ET.ParseError as err:
            raise XmpError(f"{source}: not valid XMP/XML ({err}); fix or move the file and try again.") from None
        if root.tag == _q(NS_RDF, "RDF"):  # a bare rdf:RDF without the x:xmpmeta wrapper
            wrapper = ET.Element(_q(NS_X, "xmpmeta"))
            wrapper.append(root)
            root = wrapper
        if root.tag != _q(NS_X, "xmpmeta") or root.find(_q(NS_RDF, "RDF")) is None:
            raise XmpError(f"{source}: not an XMP packet (no x:xmpmeta / rdf:RDF element).")
        return cls(root, prefixes)

    def to_string(self) -> str:
        """The packet as text with the standard ``<?xpacket?>`` wrapper (UTF-8, original prefixes kept)."""
        for prefix, uri in {**PREFIXES, **self.prefixes}.items():
            if prefix and not re.fullmatch(r"ns\d+", prefix):
                ET.register_namespace(prefix, uri)
        ET.indent(self.root, space=" ")
        body = ET.tostring(self.root, encoding="unicode")
        return f"{_XPACKET_BEGIN}\n{body}\n{_XPACKET_END}\n"

    # --- descriptions ---
    def _rdf(self) -> ET.Element:
        return self.root.find(_q(NS_RDF, "RDF"))

    def _descriptions(self) -> list[ET.Element]:
        return self._rdf().findall(_q(NS_RDF, "Description"))

    def _description_with(self, tag: str) -> ET.Element | None:
        for description in self._descriptions():
            if description.find(tag) is not None or tag in description.attrib:
                return description
        return None

    def _main_description(self) -> ET.Element:
        found = self._description_with(_q(NS_DC, "subject"))
        if found is not None:
            return found
        descriptions = self._descriptions()
        if descriptions:
            return descriptions[0]
        return ET.SubElement(self._rdf(), _q(NS_RDF, "Description"), {_q(NS_RDF, "about"): ""})

    # --- bags ---
    def _bag(self, prop: str) -> list[str]:
        description = self._description_with(prop)
        if description is None:
            return []
        if prop in description.attrib:  # a single value written as an attribute
            return [description.attrib[prop]]
        container = description.find(prop)
        items = container.findall(f"./*/{_q(NS_RDF, 'li')}") if container is not None else []
        if container is not None and not items and (container.text or "").strip():
            return [container.text.strip()]
        return [(item.text or "").strip() for item in items if (item.text or "").strip()]

    def _set_bag(self, prop: str, values: Sequence[str]) -> None:
        description = self._description_with(prop)
        if description is not None:
            description.attrib.pop(prop, None)
            for old in description.findall(prop):
                description.remove(old)
        if not values:
            return
        if description is None:
            description = self._main_description()
        container = ET.SubElement(description, prop)
        bag = ET.SubElement(container, _q(NS_RDF, "Bag"))
        for value in values:
            ET.SubElement(bag, _q(NS_RDF, "li")).text = value

    def _simple(self, prop: str) -> str | None:
        description = self._description_with(prop)
        if description is None:
            return None
        if prop in description.attrib:
            return description.attrib[prop]
        return (description.find(prop).text or "").strip() or None

    def _set_simple(self, prop: str, value: str | None) -> None:
        description = self._description_with(prop)
        if description is not None:
            description.attrib.pop(prop, None)
            for old in description.findall(prop):
                description.remove(old)
        if value is not None:
            ET.SubElement(description if description is not None else self._main_description(), prop).text = value

    # --- what phototag reads and writes ---
    @property
    def keywords(self) -> list[str]:
        """``dc:subject``."""
        return self._bag(_q(NS_DC, "subject"))

    @property
    def phototag_keywords(self) -> list[str]:
        """Keywords recorded as added by phototag."""
        return self._bag(_q(NS_PHOTOTAG, "AddedKeywords"))

    @property
    def hierarchical_keywords(self) -> list[str]:
        """``lr:hierarchicalSubject`` (Lightroom, digiKam, darktable): paths like ``animal|bird|eagle``."""
        return self._bag(_q(NS_LR, "hierarchicalSubject"))

    @property
    def tags_list(self) -> list[str]:
        """``digiKam:TagsList``: paths like ``animal/bird/eagle``."""
        return self._bag(_q(NS_DIGIKAM, "TagsList"))

    @property
    def phototag_hierarchical(self) -> list[str]:
        """The ``lr:hierarchicalSubject`` and ``digiKam:TagsList`` entries phototag added."""
        return self._bag(_q(NS_PHOTOTAG, "AddedHierarchicalSubject")) + self._bag(_q(NS_PHOTOTAG, "AddedTagsList"))

    def user_keywords(self) -> tuple[list[str], dict[str, str]]:
        """The owner's keywords (phototag's left out): ``dc:subject`` plus the leaves of hierarchical keywords.

        Returns:
            ``(keywords, paths)``: keywords de-duplicated ignoring case, in order; ``paths`` maps a keyword that came
            with a hierarchy to its path in Lightroom's form (``animal|bird|eagle``).
        """
        ours = {_fold(k) for k in self.phototag_keywords}
        ours_paths = set(self.phototag_hierarchical)
        keywords: list[str] = []
        paths: dict[str, str] = {}
        seen: set[str] = set()
        candidates = [(k, None) for k in self.keywords]
        candidates += [(h, "|") for h in self.hierarchical_keywords] + [(h, "/") for h in self.tags_list]
        for value, separator in candidates:
            if separator is None:
                if _fold(value) in ours:
                    continue
                leaf, path = value, None
            else:
                if value in ours_paths:
                    continue
                parts = [part.strip() for part in value.split(separator) if part.strip()]
                if not parts:
                    continue
                leaf, path = parts[-1], "|".join(parts) if len(parts) > 1 else None
            if path is not None and _fold(leaf) not in {_fold(k) for k in paths}:
                paths[leaf] = path
            if _fold(leaf) not in seen:
                seen.add(_fold(leaf))
                keywords.append(leaf)
        return keywords, {k: v for k, v in paths.items() if _fold(k) in seen}

    @property
    def phototag_model(self) -> str | None:
        return self._simple(_q(NS_PHOTOTAG, "Model"))

    @property
    def created_by_phototag(self) -> bool:
        """phototag created this sidecar / embedded packet (so untag may remove it when nothing else is left)."""
        return self._simple(_q(NS_PHOTOTAG, "CreatedPacket")) == "True"

    def apply(
        self,
        suggested: Sequence[str],
        *,
        model: str,
        created: bool = False,
        parent: str | None = None,
        owner_extra: Sequence[str] = (),
    ) -> tuple[list, list, list]:
        """Replace phototag's keywords with ``suggested``; returns ``(added, removed, kept)``.

        ``kept`` are suggestions the owner already had as keywords: they stay, and are not claimed by phototag.
        Beside ``dc:subject``, phototag's keywords go into ``lr:hierarchicalSubject`` and ``digiKam:TagsList``,
        under ``parent`` (Lightroom's form, ``auto|scene``) when given. ``owner_extra`` are owner keywords kept
        elsewhere (IPTC) that are copied into ``dc:subject``, so XMP readers see them too.
        """
        current = self.keywords
        ours = [k for k in self.phototag_keywords if k in current]
        folded_current = {_fold(k) for k in current}
        claimed = {_fold(k) for k in self.phototag_keywords}
        carried = [k for k in dict.fromkeys(owner_extra) if _fold(k) not in folded_current | claimed]
        current = current + carried
        owners = {_fold(k) for k in current if k not in ours} | {_fold(k) for k in self.user_keywords()[0]}
        wanted: list[str] = []
        for tag in suggested:
            if _fold(tag) not in {_fold(w) for w in wanted}:
                wanted.append(tag)
        kept = [t for t in wanted if _fold(t) in owners]
        new_ours = [t for t in wanted if _fold(t) not in owners]
        removed = [k for k in ours if k not in new_ours]
        added = [t for t in new_ours if t not in ours]
        keywords = [k for k in current if k not in removed] + added
        self._set_bag(_q(NS_DC, "subject"), keywords)
        self._set_bag(_q(NS_PHOTOTAG, "AddedKeywords"), new_ours)
        prefix = [part.strip() for part in (parent or "").split("|") if part.strip()]
        for prop, record, separator in _HIERARCHIES:
            entries = [separator.join([*prefix, tag]) for tag in new_ours]
            self._replace_entries(_q(*prop), _q(NS_PHOTOTAG, record), entries)
        self._set_simple(_q(NS_PHOTOTAG, "Model"), model)
        self._set_simple(_q(NS_PHOTOTAG, "Tool"), f"phototag {__version__}")
        self._set_simple(_q(NS_PHOTOTAG, "Date"), _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        if created or self.created_by_phototag:
            self._set_simple(_q(NS_PHOTOTAG, "CreatedPacket"), "True")
        return added, removed, kept

    def _replace_entries(self, prop: str, record: str, entries: Sequence[str]) -> None:
        """Swap the entries of bag ``prop`` phototag added earlier (listed in bag ``record``) for ``entries``."""
        old = set(self._bag(record))
        kept = [value for value in self._bag(prop) if value not in old]
        new = [value for value in entries if _fold(value) not in {_fold(k) for k in kept}]
        self._set_bag(prop, kept + new)
        self._set_bag(record, new)

    def remove_phototag(self) -> list[str]:
        """Take out phototag's keywords (flat and hierarchical) and its record; returns the keywords removed."""
        current = self.keywords
        ours = set(self.phototag_keywords)
        removed = [k for k in current if k in ours]
        self._set_bag(_q(NS_DC, "subject"), [k for k in current if k not in ours])
        for prop, record, _ in _HIERARCHIES:
            self._replace_entries(_q(*prop), _q(NS_PHOTOTAG, record), [])
        for name in ("AddedKeywords", "Model", "Tool", "Date", "CreatedPacket"):
            prop = _q(NS_PHOTOTAG, name)
            if name == "AddedKeywords":
                self._set_bag(prop, [])
            else:
                self._set_simple(prop, None)
        return removed

    def is_empty(self) -> bool:
        """No property left in any description (only ``rdf:about``)."""
        for description in self._descriptions():
            if len(description) or any(k != _q(NS_RDF, "about") for k in description.attrib):
                return False
        return True


def _decode_packet(data: bytes, source: str) -> str:
    """UTF-8 (the XMP standard), or the encoding an XML declaration names; else an error naming the file."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        declared = re.match(rb"\s*<\?xml[^>]*encoding=[\"']([A-Za-z0-9._-]+)[\"']", data)
        if declared:
            try:
                return re.sub(r"^\s*<\?xml[^>]*\?>", "", data.decode(declared.group(1).decode("ascii")))
            except (LookupError, UnicodeDecodeError):
                pass
        raise XmpError(
            f"{source}: not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x}; Latin-1?); XMP must be UTF-8: "
            "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) and try again."
        ) from None


class _StringReader:
    """A minimal file object over a string, for :func:`xml.etree.ElementTree.iterparse`."""

    def __init__(self, text: str):
        self._data = text.encode("utf-8")
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk


def _fold(tag: str) -> str:
    return tag.casefold().strip()


# --- sidecars ---------------------------------------------------------------------------------------------------
def sidecar_path(image: str | os.PathLike, naming: str = "auto") -> Path:
    """The XMP sidecar of ``image``.

    Args:
        image: The photo.
        naming: ``"full"`` = ``photo.jpg.xmp`` (digiKam, darktable), ``"stem"`` = ``photo.xmp`` (Lightroom,
            exiftool), ``"auto"`` = whichever exists (``full`` first), else ``full``.
    """
    if naming not in SIDECAR_NAMINGS:
        raise ValueError(f"sidecar naming must be one of {SIDECAR_NAMINGS}. Got {naming!r} instead.")
    image = Path(image)
    full, stem = image.with_name(image.name + ".xmp"), image.with_suffix(".xmp")
    if naming == "full":
        return full
    if naming == "stem":
        return stem
    for candidate in (full, stem):
        if candidate.is_file():
            return candidate
    return full


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _writable_sidecar(target: Path) -> Path:
    """The file to write for sidecar ``target``: a symlinked sidecar is written through the link (its real file is
    replaced, the link kept); a read-only sidecar or a dangling link is refused with a one-line error."""
    real = target
    if target.is_symlink():
        real = target.resolve()
        if not real.is_file():
            raise XmpError(
                f"{target}: the sidecar is a link to '{real}', which does not exist; fix or remove the link."
            )
    # The mode bits too: root may write anything, but a sidecar marked read-only is meant to stay as it is.
    if real.exists() and (not os.access(real, os.W_OK) or not real.stat().st_mode & 0o222):
        raise XmpError(f"{target}: the sidecar is read-only; make it writable (chmod u+w) to let phototag change it.")
    return real


def tag_sidecar(
    image: str | os.PathLike,
    tags: Sequence[str],
    *,
    model: str,
    naming: str = "auto",
    dry_run: bool = False,
    parent: str | None = None,
) -> KeywordChange:
    """Put ``tags`` as phototag's keywords into the photo's XMP sidecar (created when missing).

    A read-only sidecar is refused (:class:`XmpError`); a symlinked one is written through the link.
    """
    target = sidecar_path(image, naming)
    exists = target.is_file()
    packet = XmpPacket.parse(target.read_bytes() if exists else None, source=str(target))
    before = packet.to_string() if exists else None
    added, removed, kept = packet.apply(tags, model=model, created=not exists, parent=parent)
    change = KeywordChange(Path(image), target, added, removed, kept, packet.keywords, model)
    if not dry_run and (before is None or _without_date(packet.to_string()) != _without_date(before)):
        _atomic_write_bytes(_writable_sidecar(target), packet.to_string().encode("utf-8"))
        change.written = True
    return change


def _without_date(text: str) -> str:
    """A packet's text without phototag's date, to tell whether anything else changed."""
    return re.sub(r"<phototag:Date>[^<]*</phototag:Date>", "", text)


def untag_sidecar(image: str | os.PathLike, *, naming: str = "auto", dry_run: bool = False) -> KeywordChange | None:
    """Remove phototag's keywords from the photo's sidecar; ``None`` when it has no sidecar."""
    target = sidecar_path(image, naming)
    if not target.is_file():
        return None
    packet = XmpPacket.parse(target.read_bytes(), source=str(target))
    had_record = packet.phototag_model is not None or bool(packet.phototag_keywords)
    created = packet.created_by_phototag
    removed = packet.remove_phototag()
    change = KeywordChange(Path(image), target, removed=removed, keywords=packet.keywords)
    change.deleted = created and packet.is_empty() and not target.is_symlink()
    if dry_run or not had_record:
        return change
    real = _writable_sidecar(target)
    if change.deleted:
        target.unlink()
    else:
        _atomic_write_bytes(real, packet.to_string().encode("utf-8"))
    change.written = True
    return change


# --- embedded (exiftool) ----------------------------------------------------------------------------------------
def exiftool_path() -> str:
    """The ``exiftool`` executable (see :func:`phototag.exiftool.exiftool_path`)."""
    from .exiftool import exiftool_path as find

    return find()


@dataclass
class EmbeddedMetadata:
    """What a photo holds inside: its XMP packet text (``None`` when it has none) and IPTC ``Keywords``.

    ``problem`` says why the file is not a readable photo (exiftool's error, or the type it found instead).
    """

    packet: str | None
    iptc_keywords: list[str]
    problem: str | None = None


def read_embedded(images: Sequence[Path], exiftool: ExifTool) -> tuple[dict[str, EmbeddedMetadata], dict[str, str]]:
    """The embedded XMP packets and IPTC keywords of ``images``, through a running :class:`~.exiftool.ExifTool`.

    Returns:
        ``(found, errors)`` keyed by absolute path: metadata per readable file, a reason per file exiftool could not
        read.
    """
    import base64

    from .exiftool import as_list

    options = ["-b", "-XMP", "-IPTC:Keywords", "-FileType", "-MIMEType", "-Error", "-charset", "iptc=UTF8"]
    records, errors = exiftool.read_json(images, options)
    found = {}
    for path, record in records.items():
        raw = record.get("XMP")
        if isinstance(raw, str) and raw.startswith("base64:"):
            raw = base64.b64decode(raw[7:]).decode("utf-8", "replace")
        packet = raw if isinstance(raw, str) and raw.strip() else None
        problem = record.get("Error")
        if problem is None and not str(record.get("MIMEType", "")).startswith("image/"):
            problem = f"not an image (exiftool sees a {record.get('FileType', 'file of unknown type')})"
        found[path] = EmbeddedMetadata(packet, as_list(record.get("Keywords")), problem)
    return found, errors


def _read_one(image: Path, exiftool: ExifTool) -> EmbeddedMetadata:
    from .exiftool import safe_file_arg

    found, errors = read_embedded([image], exiftool)
    key = safe_file_arg(image)
    if key in errors:
        raise XmpError(f"{image}: exiftool cannot read it ({errors[key]}).")
    return found.get(key, EmbeddedMetadata(None, []))


def _write_embedded(
    image: Path, packet: XmpPacket | None, iptc_add: Sequence[str], iptc_remove: Sequence[str], exiftool: ExifTool
) -> None:
    """Write ``packet`` as the image's whole XMP block (``None`` deletes it) and edit IPTC Keywords."""
    with tempfile.TemporaryDirectory(prefix="phototag-xmp-") as tmp:
        packet_file = Path(tmp) / "packet.xmp"
        args = ["-m"]
        if packet is None:
            args.append("-XMP:all=")
        else:
            packet_file.write_text(packet.to_string(), encoding="utf-8")
            args.append(f"-XMP<={packet_file}")
        if image.suffix.lower() in IPTC_SUFFIXES and (iptc_add or iptc_remove):
            args += ["-charset", "iptc=UTF8", "-IPTC:CodedCharacterSet=UTF8"]
            args += [f"-IPTC:Keywords-={k}" for k in iptc_remove]
            args += [f"-IPTC:Keywords+={k}" for k in iptc_add]
        try:
            exiftool.write(image, args)
        except RuntimeError as err:
            raise XmpError(str(err)) from None


def _with_exiftool(function, image, exiftool, **kwargs):
    if exiftool is not None:
        return function(image, exiftool=exiftool, **kwargs)
    from .exiftool import ExifTool

    with ExifTool() as running:
        return function(image, exiftool=running, **kwargs)


def tag_embedded(
    image: str | os.PathLike,
    tags: Sequence[str],
    *,
    model: str,
    dry_run: bool = False,
    parent: str | None = None,
    exiftool: ExifTool | None = None,
) -> KeywordChange:
    """Put ``tags`` as phototag's keywords into the image's own XMP (and IPTC for JPEG / TIFF) via exiftool.

    IPTC keywords of the owner that the XMP lacks are copied into ``dc:subject`` too (XMP readers, Lightroom
    included, ignore IPTC once a file has XMP keywords).
    """
    if exiftool is None:
        return _with_exiftool(tag_embedded, image, None, tags=tags, model=model, dry_run=dry_run, parent=parent)
    image = Path(image)
    embedded = _read_one(image, exiftool)
    packet = XmpPacket.parse(embedded.packet, source=str(image))
    before = _without_date(packet.to_string()) if embedded.packet is not None else None
    added, removed, kept = packet.apply(
        tags, model=model, created=embedded.packet is None, parent=parent, owner_extra=embedded.iptc_keywords
    )
    change = KeywordChange(image, image, added, removed, kept, packet.keywords, model)
    if not dry_run and _without_date(packet.to_string()) != before:
        iptc = {_fold(k) for k in embedded.iptc_keywords}
        iptc_add = [k for k in added if _fold(k) not in iptc]
        _write_embedded(image, packet, iptc_add, removed, exiftool)
        change.written = True
    return change


def untag_embedded(
    image: str | os.PathLike, *, dry_run: bool = False, exiftool: ExifTool | None = None
) -> KeywordChange | None:
    """Remove phototag's keywords from the image's own XMP / IPTC; ``None`` when phototag never tagged it."""
    if exiftool is None:
        return _with_exiftool(untag_embedded, image, None, dry_run=dry_run)
    image = Path(image)
    text = _read_one(image, exiftool).packet
    if text is None:
        return None
    packet = XmpPacket.parse(text, source=str(image))
    if packet.phototag_model is None and not packet.phototag_keywords:
        return None
    created = packet.created_by_phototag
    removed = packet.remove_phototag()
    change = KeywordChange(image, image, removed=removed, keywords=packet.keywords)
    if not dry_run:
        # A packet phototag created and that now holds nothing else goes, so the file's XMP is as before.
        _write_embedded(image, None if created and packet.is_empty() else packet, [], removed, exiftool)
        change.written = True
    return change


# --- many photos ------------------------------------------------------------------------------------------------
def model_identity(model) -> str:
    """``method@directory sha1:<first 8 hex of the weights>`` — which model suggested the keywords."""
    where = model.path.name if model.path is not None else "in-memory"
    digest = ""
    weights = model.path / "weights.safetensors" if model.path is not None else None
    if weights is not None and weights.is_file():
        digest = " sha1:" + hashlib.sha1(weights.read_bytes()).hexdigest()[:8]
    return f"{model.method.name}@{where}{digest}"


def write_keywords(
    predictions: Sequence[dict],
    *,
    mode: str,
    model: str,
    naming: str = "auto",
    dry_run: bool = False,
    parent: str | None = None,
    on_written=None,
) -> tuple[list[KeywordChange], list[tuple[str, str]]]:
    """Write each prediction's tags (``{"image": path, "tags": [{"tag", "score"}]}``) as keywords.

    Args:
        predictions: What to write, one per photo.
        mode: ``"xmp"`` (sidecars) or ``"embedded"`` (the image files, through one exiftool process).
        model: The model recorded beside phototag's keywords.
        naming: Sidecar naming (see :func:`sidecar_path`).
        dry_run: Only say what would change.
        parent: Hierarchical parent of phototag's keywords (``auto`` or ``auto|scene``).
        on_written: Called with each :class:`KeywordChange` once its file is written (e.g. to record it).

    Returns:
        ``(changes, failures)``: one change per photo written (or that would be, in a dry run), and
        ``(path, reason)`` for photos whose metadata could not be read or written (the others still go ahead).
    """
    if mode not in WRITE_MODES:
        raise ValueError(f"--write must be one of {WRITE_MODES}. Got {mode!r} instead.")
    changes, failures = [], []
    with _exiftool_for(mode) as exiftool:
        for prediction in predictions:
            tags = [t["tag"] for t in prediction["tags"]]
            try:
                if mode == "xmp":
                    change = tag_sidecar(
                        prediction["image"], tags, model=model, naming=naming, dry_run=dry_run, parent=parent
                    )
                else:
                    change = tag_embedded(
                        prediction["image"], tags, model=model, dry_run=dry_run, parent=parent, exiftool=exiftool
                    )
            except (XmpError, OSError, ValueError) as err:
                failures.append((str(prediction["image"]), str(err)))
                continue
            changes.append(change)
            if on_written is not None and not dry_run:
                on_written(change)
    return changes, failures


def _exiftool_for(mode: str):
    """A running ExifTool for embedded mode, nothing (a null context) for sidecars."""
    import contextlib

    if mode != "embedded":
        return contextlib.nullcontext(None)
    from .exiftool import ExifTool

    return ExifTool()


def remove_keywords(
    images: Sequence[str | os.PathLike], *, mode: str, naming: str = "auto", dry_run: bool = False
) -> tuple[list[KeywordChange], list[tuple[str, str]]]:
    """Undo :func:`write_keywords` on ``images``: phototag's keywords out (flat and hierarchical), the rest kept."""
    if mode not in WRITE_MODES:
        raise ValueError(f"mode must be one of {WRITE_MODES}. Got {mode!r} instead.")
    changes, failures = [], []
    with _exiftool_for(mode) as exiftool:
        for image in images:
            try:
                change = (
                    untag_sidecar(image, naming=naming, dry_run=dry_run)
                    if mode == "xmp"
                    else untag_embedded(image, dry_run=dry_run, exiftool=exiftool)
                )
            except (XmpError, OSError, ValueError) as err:
                failures.append((str(image), str(err)))
                continue
            if change is not None:
                changes.append(change)
    return changes, failures

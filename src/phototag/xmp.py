"""Write suggested tags into photo libraries' own metadata: XMP sidecars and embedded XMP / IPTC keywords.

Keywords go into ``dc:subject`` (the bag digiKam, darktable, Lightroom and exiftool read as "keywords"). Beside
them, phototag records in its own XMP namespace which keywords *it* added and with which model::

    <rdf:Description xmlns:phototag="http://ns.phototag.dev/xmp/1.0/">
      <phototag:AddedKeywords><rdf:Bag><rdf:li>beach</rdf:li>...</rdf:Bag></phototag:AddedKeywords>
      <phototag:Model>mlp@default_model sha1:0123abcd</phototag:Model>
      <phototag:Tool>phototag 0.1.0</phototag:Tool>
      <phototag:Date>2026-11-23T09:30:00+00:00</phototag:Date>
    </rdf:Description>

So re-tagging (e.g. with a newer model) replaces only phototag's keywords, and ``phototag untag`` removes only
them: the user's own keywords are never touched, and a keyword the user already had is never claimed by phototag.
Everything else in the packet (other properties, other namespaces, ``rdf:about``) is kept; the XML is re-serialised,
so whitespace and the place of namespace declarations may change, not the metadata.

Sidecars (``photo.jpg.xmp`` as digiKam / darktable write them, or ``photo.xmp`` as Lightroom does) are edited with
the standard library alone. Keywords *embedded* in the image file are written through exiftool (Debian package
``libimage-exiftool-perl``), which rewrites JPEG / TIFF / PNG / WebP / HEIC / raw containers safely: the XMP packet
is edited here and written back whole, and IPTC ``Keywords`` (JPEG / TIFF) get the same additions and removals.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__

NS_X = "adobe:ns:meta/"
NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_DC = "http://purl.org/dc/elements/1.1/"
NS_PHOTOTAG = "http://ns.phototag.dev/xmp/1.0/"
PREFIXES = {"x": NS_X, "rdf": NS_RDF, "dc": NS_DC, "phototag": NS_PHOTOTAG}

SIDECAR_NAMINGS = ("auto", "full", "stem")
WRITE_MODES = ("xmp", "embedded")
#: Containers exiftool writes IPTC into; elsewhere only the XMP packet is written.
IPTC_SUFFIXES = frozenset({".jpg", ".jpeg", ".tif", ".tiff"})

_XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
_XPACKET_END = '<?xpacket end="w"?>'


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


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
            text = text.decode("utf-8-sig", errors="strict")
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
    def phototag_model(self) -> str | None:
        return self._simple(_q(NS_PHOTOTAG, "Model"))

    @property
    def created_by_phototag(self) -> bool:
        """phototag created this sidecar / embedded packet (so untag may remove it when nothing else is left)."""
        return self._simple(_q(NS_PHOTOTAG, "CreatedPacket")) == "True"

    def apply(self, suggested: Sequence[str], *, model: str, created: bool = False) -> tuple[list, list, list]:
        """Replace phototag's keywords with ``suggested``; returns ``(added, removed, kept)``.

        ``kept`` are suggestions the owner already had as keywords: they stay, and are not claimed by phototag.
        """
        current = self.keywords
        ours = [k for k in self.phototag_keywords if k in current]
        owners = {_fold(k) for k in current if k not in ours}
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
        self._set_simple(_q(NS_PHOTOTAG, "Model"), model)
        self._set_simple(_q(NS_PHOTOTAG, "Tool"), f"phototag {__version__}")
        self._set_simple(_q(NS_PHOTOTAG, "Date"), _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        if created or self.created_by_phototag:
            self._set_simple(_q(NS_PHOTOTAG, "CreatedPacket"), "True")
        return added, removed, kept

    def remove_phototag(self) -> list[str]:
        """Take out phototag's keywords and its record; returns the keywords removed."""
        current = self.keywords
        ours = set(self.phototag_keywords)
        removed = [k for k in current if k in ours]
        self._set_bag(_q(NS_DC, "subject"), [k for k in current if k not in ours])
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


def tag_sidecar(
    image: str | os.PathLike, tags: Sequence[str], *, model: str, naming: str = "auto", dry_run: bool = False
) -> KeywordChange:
    """Put ``tags`` as phototag's keywords into the photo's XMP sidecar (created when missing)."""
    target = sidecar_path(image, naming)
    exists = target.is_file()
    packet = XmpPacket.parse(target.read_bytes() if exists else None, source=str(target))
    before_model = packet.phototag_model
    added, removed, kept = packet.apply(tags, model=model, created=not exists)
    change = KeywordChange(Path(image), target, added, removed, kept, packet.keywords, model)
    if not dry_run and (change.changed or not exists or before_model != model):
        _atomic_write_bytes(target, packet.to_string().encode("utf-8"))
        change.written = True
    return change


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
    change.deleted = created and packet.is_empty()
    if dry_run or not had_record:
        return change
    if change.deleted:
        target.unlink()
    else:
        _atomic_write_bytes(target, packet.to_string().encode("utf-8"))
    change.written = True
    return change


# --- embedded (exiftool) ----------------------------------------------------------------------------------------
def exiftool_path() -> str:
    """The ``exiftool`` executable.

    Raises:
        RuntimeError: exiftool is not installed (names the package to install).
    """
    found = shutil.which(os.environ.get("PHOTOTAG_EXIFTOOL", "exiftool"))
    if found is None:
        raise RuntimeError(
            "Writing keywords into image files needs exiftool: install it (Debian/Ubuntu: "
            "apt-get install libimage-exiftool-perl; macOS: brew install exiftool), or use --write xmp for sidecars."
        )
    return found


def _exiftool(args: Sequence[str], *, source: Path) -> bytes:
    result = subprocess.run([exiftool_path(), *args], capture_output=True, timeout=120, check=False)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).decode("utf-8", "replace").strip().splitlines()
        raise XmpError(f"{source}: exiftool failed ({message[-1] if message else result.returncode}).")
    return result.stdout


def read_embedded_packet(image: Path) -> str | None:
    """The image's embedded XMP packet, or ``None`` when it has none."""
    data = _exiftool(["-q", "-q", "-b", "-XMP", str(image)], source=image)
    return data.decode("utf-8-sig") if data.strip() else None


def _write_embedded(image: Path, packet: XmpPacket | None, iptc_add: Sequence[str], iptc_remove: Sequence[str]) -> None:
    """Write ``packet`` as the image's whole XMP block (``None`` deletes it) and edit IPTC Keywords."""
    with tempfile.TemporaryDirectory(prefix="phototag-xmp-") as tmp:
        packet_file = Path(tmp) / "packet.xmp"
        args = ["-q", "-m", "-overwrite_original"]
        if packet is None:
            args.append("-XMP:all=")
        else:
            packet_file.write_text(packet.to_string(), encoding="utf-8")
            args.append(f"-XMP<={packet_file}")
        if image.suffix.lower() in IPTC_SUFFIXES and (iptc_add or iptc_remove):
            args += ["-charset", "iptc=UTF8", "-IPTC:CodedCharacterSet=UTF8"]
            args += [f"-IPTC:Keywords-={k}" for k in iptc_remove]
            args += [f"-IPTC:Keywords+={k}" for k in iptc_add]
        _exiftool([*args, str(image)], source=image)


def tag_embedded(image: str | os.PathLike, tags: Sequence[str], *, model: str, dry_run: bool = False) -> KeywordChange:
    """Put ``tags`` as phototag's keywords into the image's own XMP (and IPTC for JPEG / TIFF) via exiftool."""
    image = Path(image)
    text = read_embedded_packet(image)
    packet = XmpPacket.parse(text, source=str(image))
    before_model = packet.phototag_model
    added, removed, kept = packet.apply(tags, model=model, created=text is None)
    change = KeywordChange(image, image, added, removed, kept, packet.keywords, model)
    if not dry_run and (change.changed or before_model != model):
        _write_embedded(image, packet, added, removed)
        change.written = True
    return change


def untag_embedded(image: str | os.PathLike, *, dry_run: bool = False) -> KeywordChange | None:
    """Remove phototag's keywords from the image's own XMP / IPTC; ``None`` when phototag never tagged it."""
    image = Path(image)
    text = read_embedded_packet(image)
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
        _write_embedded(image, None if created and packet.is_empty() else packet, [], removed)
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
) -> tuple[list[KeywordChange], list[tuple[str, str]]]:
    """Write each prediction's tags (``{"image": path, "tags": [{"tag", "score"}]}``) as keywords.

    Returns:
        ``(changes, failures)``: one change per photo written (or that would be, in a dry run), and
        ``(path, reason)`` for photos whose metadata could not be read or written (the others still go ahead).
    """
    if mode not in WRITE_MODES:
        raise ValueError(f"--write must be one of {WRITE_MODES}. Got {mode!r} instead.")
    if mode == "embedded":
        exiftool_path()
    changes, failures = [], []
    for prediction in predictions:
        tags = [t["tag"] for t in prediction["tags"]]
        try:
            if mode == "xmp":
                changes.append(tag_sidecar(prediction["image"], tags, model=model, naming=naming, dry_run=dry_run))
            else:
                changes.append(tag_embedded(prediction["image"], tags, model=model, dry_run=dry_run))
        except (XmpError, OSError, UnicodeDecodeError) as err:
            failures.append((str(prediction["image"]), str(err)))
    return changes, failures


def remove_keywords(
    images: Sequence[str | os.PathLike], *, mode: str, naming: str = "auto", dry_run: bool = False
) -> tuple[list[KeywordChange], list[tuple[str, str]]]:
    """Undo :func:`write_keywords` on ``images``: phototag's keywords out, everything else kept."""
    if mode not in WRITE_MODES:
        raise ValueError(f"mode must be one of {WRITE_MODES}. Got {mode!r} instead.")
    if mode == "embedded":
        exiftool_path()
    changes, failures = [], []
    for image in images:
        try:
            change = (
                untag_sidecar(image, naming=naming, dry_run=dry_run)
                if mode == "xmp"
                else untag_embedded(image, dry_run=dry_run)
            )
        except (XmpError, OSError, UnicodeDecodeError) as err:
            failures.append((str(image), str(err)))
            continue
        if change is not None:
            changes.append(change)
    return changes, failures

"""Keywords in XMP sidecars and embedded XMP / IPTC, read back by an independent reader (exiftool)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from phototag.cli import main
from phototag.xmp import XmpError, XmpPacket, sidecar_path, tag_sidecar, untag_sidecar

# A sidecar as digiKam writes it: the owner's keywords, a rating, a title, a hierarchical keyword, another namespace.
DIGIKAM_SIDECAR = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:digiKam="http://www.digikam.org/ns/1.0/"
   xmp:Rating="4">
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Holiday</rdf:li></rdf:Alt></dc:title>
   <dc:subject><rdf:Bag><rdf:li>Family</rdf:li><rdf:li>sky</rdf:li></rdf:Bag></dc:subject>
   <digiKam:TagsList><rdf:Seq><rdf:li>People/Family</rdf:li></rdf:Seq></digiKam:TagsList>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""


def exiftool_json(*paths: Path) -> list[dict]:
    exiftool = shutil.which("exiftool")
    if exiftool is None:
        pytest.skip(
            "exiftool is the independent XMP reader: apt-get install libimage-exiftool-perl "
            "(scripts/setup.sh does it when apt is available)"
        )
    out = subprocess.run(
        [exiftool, "-j", "-G1", "-struct", "-XMP:all", "-IPTC:Keywords", *map(str, paths)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def as_list(value) -> list:
    return [] if value is None else (value if isinstance(value, list) else [value])


def test_packet_keeps_owner_keywords_and_replaces_only_phototags():
    packet = XmpPacket.parse(DIGIKAM_SIDECAR)
    assert packet.keywords == ["Family", "sky"]
    added, removed, kept = packet.apply(["beach", "sky", "sea", "Beach"], model="m1")
    assert (added, removed, kept) == (["beach", "sea"], [], ["sky"])
    assert packet.keywords == ["Family", "sky", "beach", "sea"]
    assert packet.phototag_keywords == ["beach", "sea"] and packet.phototag_model == "m1"
    again = XmpPacket.parse(packet.to_string())  # survives serialising
    added, removed, kept = again.apply(["sea", "sand"], model="m2")
    assert (added, removed, kept) == (["sand"], ["beach"], [])
    assert again.keywords == ["Family", "sky", "sea", "sand"]
    assert again.remove_phototag() == ["sea", "sand"]
    assert again.keywords == ["Family", "sky"] and again.phototag_model is None
    text = again.to_string()
    assert 'xmp:Rating="4"' in text and "People/Family" in text and "Holiday" in text and "phototag:" not in text


def test_sidecar_names_and_bad_xml(tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"")
    assert sidecar_path(image) == tmp_path / "photo.jpg.xmp"
    assert sidecar_path(image, "stem") == tmp_path / "photo.xmp"
    (tmp_path / "photo.xmp").write_text(DIGIKAM_SIDECAR)
    assert sidecar_path(image) == tmp_path / "photo.xmp"  # the existing one wins
    with pytest.raises(ValueError, match="sidecar naming"):
        sidecar_path(image, "lightroom")
    (tmp_path / "photo.xmp").write_text("<x:xmpmeta")
    with pytest.raises(XmpError, match="photo.xmp: not valid XMP"):
        tag_sidecar(image, ["sky"], model="m")


def test_untag_deletes_only_sidecars_phototag_created(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    change = tag_sidecar(image, ["sky", "tree"], model="m", dry_run=True)
    assert change.added == ["sky", "tree"] and not change.written and not (tmp_path / "a.png.xmp").exists()
    assert tag_sidecar(image, ["sky", "tree"], model="m").written
    change = untag_sidecar(image)
    assert change.removed == ["sky", "tree"] and change.deleted and not (tmp_path / "a.png.xmp").exists()
    owned = tmp_path / "a.png.xmp"
    owned.write_text(DIGIKAM_SIDECAR)
    tag_sidecar(image, ["tree"], model="m")
    change = untag_sidecar(image)
    assert change.removed == ["tree"] and not change.deleted
    assert XmpPacket.parse(owned.read_text()).keywords == ["Family", "sky"]


@pytest.fixture
def default_model(monkeypatch):
    """The shipped default model, loaded once: the CLI's load_model(None) gets the same (real) model back."""
    import phototag.model
    from live_server import shared_default_model

    model, load = shared_default_model(), phototag.model.load_model
    monkeypatch.setattr(phototag.model, "load_model", lambda path=None: model if path is None else load(path))
    return model


@pytest.fixture
def library(tmp_path) -> Path:
    """Two photos: one with the owner's keywords already embedded and in a sidecar, one bare."""
    from phototag.cli import example_images

    samples = [p for p in example_images() if p.suffix in (".png", ".jpg")][:2]
    if len(samples) < 2:
        pytest.skip("sample photos from scikit-image / scikit-learn are not installed")
    folder = tmp_path / "library"
    folder.mkdir()
    for i, sample in enumerate(samples):
        Image.open(sample).convert("RGB").save(folder / f"img{i}.jpg", quality=90)
    (folder / "img0.jpg.xmp").write_text(DIGIKAM_SIDECAR, encoding="utf-8")
    return folder


def test_tag_write_xmp_round_trip_with_exiftool(library, default_model, capsys):
    photos = sorted(library.glob("*.jpg"))
    expected = {Path(p["image"]).name: [t["tag"] for t in p["tags"]] for p in default_model.predict(photos, top_k=3)[0]}
    before = {p: p.read_bytes() for p in photos}
    assert main(["-q", "tag", str(library), "--write", "xmp", "--top-k", "3", "--dry-run"]) == 0
    assert "would change" in capsys.readouterr().out and not (library / "img1.jpg.xmp").exists()
    assert main(["-q", "tag", str(library), "--write", "xmp", "--top-k", "3"]) == 0
    assert {p: p.read_bytes() for p in photos} == before  # sidecars only: the images are untouched
    read = {Path(r["SourceFile"]).name: r for r in exiftool_json(library / "img0.jpg.xmp", library / "img1.jpg.xmp")}
    owner = read["img0.jpg.xmp"]
    ours0 = [t for t in expected["img0.jpg"] if t not in ("Family", "sky")]
    assert as_list(owner["XMP-dc:Subject"]) == ["Family", "sky"] + ours0
    assert as_list(owner["XMP-phototag:AddedKeywords"]) == ours0
    assert owner["XMP-xmp:Rating"] == 4 and owner["XMP-dc:Title"] == "Holiday"
    # phototag's keywords also go into the hierarchical keyword lists, beside the owner's
    assert as_list(owner["XMP-digiKam:TagsList"]) == ["People/Family"] + ours0
    assert as_list(owner["XMP-lr:HierarchicalSubject"]) == ours0
    assert owner["XMP-phototag:Model"].startswith(f"{default_model.method.name}@default_model sha1:")
    assert as_list(read["img1.jpg.xmp"]["XMP-dc:Subject"]) == expected["img1.jpg"]

    assert main(["-q", "untag", str(library)]) == 0
    assert not (library / "img1.jpg.xmp").exists()  # phototag created it, nothing else was in it
    owner = exiftool_json(library / "img0.jpg.xmp")[0]
    assert as_list(owner["XMP-dc:Subject"]) == ["Family", "sky"] and "XMP-phototag:Model" not in owner
    assert owner["XMP-xmp:Rating"] == 4 and as_list(owner["XMP-digiKam:TagsList"]) == ["People/Family"]
    assert "XMP-lr:HierarchicalSubject" not in owner and "XMP-phototag:AddedTagsList" not in owner


def test_tag_write_embedded_round_trip_with_exiftool(library, default_model, capsys):
    exiftool = shutil.which("exiftool")
    exiftool_json(library / "img0.jpg")  # skips without exiftool
    photo = library / "img0.jpg"
    subprocess.run(
        [exiftool, "-q", "-overwrite_original", "-XMP-dc:Subject=mine", "-IPTC:Keywords=mine", "-XMP-xmp:Rating=2"]
        + [str(photo)],
        check=True,
    )
    pixels = Image.open(photo).tobytes()
    expected = [t["tag"] for t in default_model.predict([photo], top_k=3)[0][0]["tags"]]
    assert main(["-q", "tag", str(photo), "--write", "embedded", "--top-k", "3"]) == 0
    got = exiftool_json(photo)[0]
    assert as_list(got["XMP-dc:Subject"]) == ["mine"] + expected
    assert as_list(got["IPTC:Keywords"]) == ["mine"] + expected
    assert as_list(got["XMP-phototag:AddedKeywords"]) == expected and got["XMP-xmp:Rating"] == 2
    assert Image.open(photo).tobytes() == pixels

    # Re-tagging (another rule, as with a newer model) replaces only phototag's keywords.
    assert main(["-q", "tag", str(photo), "--write", "embedded", "--top-k", "1"]) == 0
    got = exiftool_json(photo)[0]
    best = [t["tag"] for t in default_model.predict([photo], top_k=1)[0][0]["tags"]]  # + categories it adds
    assert best[0] == expected[0]
    assert as_list(got["XMP-dc:Subject"]) == ["mine", *best]
    assert as_list(got["IPTC:Keywords"]) == ["mine", *best]

    assert main(["-q", "untag", str(photo), "--write", "embedded"]) == 0
    got = exiftool_json(photo)[0]
    assert as_list(got["XMP-dc:Subject"]) == ["mine"] and as_list(got["IPTC:Keywords"]) == ["mine"]
    assert got["XMP-xmp:Rating"] == 2 and not any(k.startswith("XMP-phototag") for k in got)
    assert "1 of 1 photo(s) untagged" in capsys.readouterr().out

"""Your own photo library (issue 14): import its keywords, tag the rest incrementally, HEIC and raw files.

The library is real: Corel5k photos whose keywords are written by exiftool where photo apps put them (sidecars,
IPTC, embedded XMP with hierarchical paths), plus a HEIC made with the HEIF plugin, a DNG (raw container LibRaw
reads), a file that is not an image and files that are not photos.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from library_builder import build_library, corel5k_photos, write_dng
from phototag.cli import main
from phototag.data import Dataset
from phototag.xmp import XmpError, XmpPacket, tag_sidecar

PLACES = ("sidecar", "sidecar_stem", "iptc", "xmp", "none")
N_PHOTOS = 20
N_COPIES = 16


def exiftool_read(*paths: Path, tags: tuple[str, ...] = ("-XMP-dc:Subject",)) -> dict[str, dict]:
    out = subprocess.run(["exiftool", "-j", *tags, "--", *map(str, paths)], capture_output=True, check=True)
    return {Path(r["SourceFile"]).name: r for r in json.loads(out.stdout)}


def as_list(value) -> list[str]:
    return [] if value is None else [str(v) for v in (value if isinstance(value, list) else [value])]


def state(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}


def changed(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


@pytest.fixture(scope="module")
def pristine_library(corel5k_dir, tmp_path_factory):
    """A library built once: 20 Corel5k photos (4 per place), a HEIC, a DNG, a broken file, two non-photos."""
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is needed (bash scripts/install_system_tools.sh)")
    pillow_heif = pytest.importorskip("pillow_heif", reason="HEIC support: pip install 'phototag[formats]'")
    pytest.importorskip("rawpy", reason="raw support: pip install 'phototag[formats]'")
    pytest.importorskip("tifffile", reason="tifffile writes the test DNG")
    folder = tmp_path_factory.mktemp("library") / "photos"
    photos = corel5k_photos(corel5k_dir, N_PHOTOS + 3, seed=1)
    extra, photos = photos[N_PHOTOS:], photos[:N_PHOTOS]
    truth = build_library(folder, [(s, k, PLACES[i % len(PLACES)]) for i, (s, k) in enumerate(photos)])
    pillow_heif.register_heif_opener()
    Image.open(extra[0][0]).save(folder / "phone.heic")
    write_dng(folder / "camera.dng", Image.open(extra[1][0]))
    (folder / "broken.jpg").write_bytes(b"not a photo at all\n" * 20)
    (folder / "notes.txt").write_text("shopping list")
    (folder / ".hidden.jpg").write_bytes(b"")
    truth[folder / "phone.heic"], truth[folder / "camera.dng"] = extra[0][1], extra[1][1]
    places = {p.name: PLACES[i % len(PLACES)] for i, p in enumerate(sorted(truth)[:N_PHOTOS])}
    places.update({"phone.heic": "none", "camera.dng": "none"})
    return folder, {p.name: k for p, k in truth.items()}, places


@pytest.fixture
def library(pristine_library, tmp_path):
    """A fresh copy of the library for a test that writes into it."""
    folder, truth, places = pristine_library
    copy = tmp_path / "photos"
    shutil.copytree(folder, copy)
    return copy, truth, places


@pytest.fixture(scope="module")
def trained(pristine_library, tmp_path_factory):
    """``import library`` + ``train --method knn`` on the pristine library: (dataset dir, model dir)."""
    folder = pristine_library[0]
    root = tmp_path_factory.mktemp("trained")
    assert main(["-q", "import", "library", str(folder), str(root / "ds")]) == 0
    assert main(["-q", "train", str(root / "ds"), "--method", "knn", "--out", str(root / "model")]) == 0
    return root / "ds", root / "model"


def test_import_library_reads_every_keyword_source(pristine_library, trained):
    folder, truth, places = pristine_library
    ds = Dataset.load(trained[0])
    records = {r.id: r for r in ds.records}
    for name, place in places.items():
        record = records[name]
        if place == "none":
            assert record.split == "unlabeled" and record.tags == []
            continue
        assert record.split == "train" and record.tags == truth[name], name
        source = {"sidecar": "sidecar", "sidecar_stem": "sidecar", "iptc": "iptc", "xmp": "xmp"}[place]
        assert record.meta["keyword_sources"] == [source]
        if place == "xmp":  # the leaf is the tag, its path is kept
            assert record.meta["keyword_paths"] == {k: f"nature|{k}" for k in truth[name]}
    report = ds.info["import"]
    assert report["photos_found"] == N_PHOTOS + 3  # + the HEIC, the DNG, the broken one
    assert report["photos_per_keyword_source"] == {"sidecar": 8, "xmp": 4, "iptc": 4}
    assert report["photos_without_keywords"] == 4 + 2
    assert [u["path"] for u in report["unreadable"]] == [str(folder / "broken.jpg")]
    assert report["skipped"]["not a photo format phototag reads (.txt)"]["files"] == [str(folder / "notes.txt")]
    assert report["skipped"]["hidden file"]["files"] == [str(folder / ".hidden.jpg")]
    assert ds.split_counts() == {"train": 16, "val": 0, "test": 0, "unlabeled": 6}


def test_keywords_phototag_wrote_are_not_labels(library, tmp_path):
    folder, truth, places = library
    bare = next(n for n, p in places.items() if p == "none" and n.endswith(".jpg"))
    tag_sidecar(folder / bare, ["beach", "sky"], model="knn@test", parent="auto")
    owned = next(n for n, p in places.items() if p == "sidecar")
    tag_sidecar(folder / owned, ["zebra"], model="knn@test")  # beside the owner's own keywords
    assert main(["-q", "import", "library", str(folder), str(tmp_path / "ds")]) == 0
    records = {r.id: r for r in Dataset.load(tmp_path / "ds").records}
    assert records[bare].split == "unlabeled" and records[bare].tags == []
    assert records[owned].tags == truth[owned]


def test_user_keywords_take_leaves_of_hierarchies_and_dedupe():
    packet = XmpPacket.parse(None)
    packet._set_bag("{http://purl.org/dc/elements/1.1/}subject", ["eagle", "Family", "auto-kw"])
    packet._set_bag("{http://ns.adobe.com/lightroom/1.0/}hierarchicalSubject", ["animal|bird|eagle", "place|Paris"])
    packet._set_bag("{http://www.digikam.org/ns/1.0/}TagsList", ["People/family", "place/Paris"])
    packet._set_bag("{http://ns.phototag.dev/xmp/1.0/}AddedKeywords", ["auto-kw"])
    keywords, paths = packet.user_keywords()
    assert keywords == ["eagle", "Family", "Paris"]
    assert paths == {"eagle": "animal|bird|eagle", "Paris": "place|Paris", "family": "People|family"}


def run_tag(folder: Path, model: Path, catalog: Path, *extra: str) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["-q", "tag", str(folder), "--model", str(model), "--catalog", str(catalog), *extra])
    return code, err.getvalue()


@pytest.mark.slow
def test_incremental_tagging_untagged_only(library, trained, tmp_path):
    folder, truth, places = library
    model, catalog = trained[1], tmp_path / "catalog.sqlite"
    args = ("--write", "xmp", "--untagged-only", "--keyword-parent", "auto")
    before = state(folder)
    code, err = run_tag(folder, model, catalog, *args)
    assert code == 1 and "broken.jpg" in err  # the broken file is reported, everything else done
    assert "written 6, unchanged 0, skipped 18 (16 with your keywords, 2 not photos), failed 1" in err
    bare = sorted(n for n, p in places.items() if p == "none")
    assert changed(before, state(folder)) == sorted(f"{n}.xmp" for n in bare)  # user files untouched
    read = exiftool_read(*(folder / f"{n}.xmp" for n in bare), tags=("-XMP-dc:Subject", "-XMP-lr:all"))
    for name in bare:  # HEIC and DNG included
        keywords = as_list(read[f"{name}.xmp"]["Subject"])
        assert keywords and as_list(read[f"{name}.xmp"]["HierarchicalSubject"]) == [f"auto|{k}" for k in keywords]

    # second run: nothing scored, nothing written (bytes and times of every file the same)
    before = state(folder)
    code, err = run_tag(folder, model, catalog, *args)
    assert "written 0, unchanged 6" in err and changed(before, state(folder)) == []

    # one photo's content changes: only its sidecar is rewritten
    victim = next(n for n in bare if n.endswith(".jpg"))
    donor = next(n for n, p in places.items() if p == "iptc")
    Image.open(folder / donor).transpose(Image.Transpose.ROTATE_180).save(folder / victim, quality=80)
    before = state(folder)
    code, err = run_tag(folder, model, catalog, *args)
    assert "written 1, unchanged 5" in err and changed(before, state(folder)) == [f"{victim}.xmp"]

    # a photo that became unreadable is reported and keeps the keywords phototag wrote before
    (folder / victim).write_bytes((folder / victim).read_bytes()[:200])
    sidecar = (folder / f"{victim}.xmp").read_bytes()
    code, err = run_tag(folder, model, catalog, *args)
    assert code == 1 and "failed 2" in err and (folder / f"{victim}.xmp").read_bytes() == sidecar

    # a new model re-tags everything; --force redoes all even with the same model
    other = tmp_path / "other-model"
    assert main(["-q", "train", str(trained[0]), "--method", "knn", "--set", "k=3", "--out", str(other)]) == 0
    code, err = run_tag(folder, other, catalog, *args)
    assert "written 5, unchanged 0" in err
    code, err = run_tag(folder, other, catalog, *args, "--force")
    assert "written 0, unchanged 5" in err  # redone; same keywords and model, so the files stay as they are

    # untag removes flat and hierarchical keywords and forgets the photos, so tagging writes them again
    assert main(["-q", "untag", str(folder), "--catalog", str(catalog)]) == 0
    assert not any((folder / f"{n}.xmp").exists() for n in bare)  # phototag created them; nothing else in them
    code, err = run_tag(folder, other, catalog, *args)
    assert "written 5" in err


@pytest.mark.slow
def test_killed_run_leaves_no_partial_file_and_rerun_finishes(library, trained, tmp_path, monkeypatch):
    folder, truth, places = library
    bare = sorted(n for n, p in places.items() if p == "none")
    for i in range(N_COPIES):  # more untagged photos, so the run takes long enough to be killed half-way
        Image.open(folder / bare[0]).rotate(i * 7).save(folder / f"copy{i:02d}.jpg")
    command = [sys.executable, "-m", "phototag.cli", "-q", "tag", str(folder), "--model", str(trained[1])]
    command += ["--catalog", str(tmp_path / "catalog.sqlite"), "--write", "xmp", "--untagged-only"]
    command += ["--checkpoint-every", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PHOTOTAG_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(list(folder.glob("copy*.xmp"))) < 3:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    for sidecar in folder.glob("*.xmp"):  # every sidecar there is complete
        XmpPacket.parse(sidecar.read_bytes(), source=str(sidecar))
    untagged = bare + [f"copy{i:02d}.jpg" for i in range(N_COPIES)]
    n_done = sum((folder / f"{n}.xmp").is_file() for n in untagged)
    assert 3 <= n_done < len(untagged)
    monkeypatch.setenv("PHOTOTAG_CACHE", str(tmp_path / "cache"))  # the features the killed run extracted
    code, err = run_tag(folder, trained[1], tmp_path / "catalog.sqlite", "--write", "xmp", "--untagged-only")
    assert f"written {len(untagged) - n_done}, unchanged {n_done}" in err, err
    assert all((folder / f"{n}.xmp").is_file() for n in untagged)
    assert not [p.name for p in folder.glob(".*") if p.name != ".hidden.jpg"]  # no temporary file left either


def test_embedded_keywords_carry_iptc_and_stay_unchanged_on_rerun(library, trained, tmp_path):
    folder, truth, places = library
    iptc = next(n for n, p in places.items() if p == "iptc")
    photo = folder / iptc
    dashed = folder / "-beach.jpg"  # a name exiftool could take for an option
    shutil.copyfile(folder / next(n for n, p in places.items() if p == "none"), dashed)
    catalog = tmp_path / "catalog.sqlite"
    code, err = run_tag(photo, trained[1], catalog, "--write", "embedded", "--keyword-parent", "auto")
    assert code == 0, err
    code, err = run_tag(dashed, trained[1], catalog, "--write", "embedded")
    assert code == 0 and "written 1" in err, err
    read = exiftool_read(photo, dashed, tags=("-XMP-dc:Subject", "-IPTC:Keywords", "-XMP-digiKam:TagsList"))
    subject = as_list(read[iptc]["Subject"])
    assert subject[: len(truth[iptc])] == truth[iptc]  # the owner's IPTC keywords are now in XMP too, first
    ours = subject[len(truth[iptc]) :]
    assert ours and as_list(read[iptc]["TagsList"]) == [f"auto/{k}" for k in ours]
    assert as_list(read[iptc]["Keywords"]) == truth[iptc] + ours
    assert as_list(read["-beach.jpg"]["Subject"])
    mtime = photo.stat().st_mtime_ns
    code, err = run_tag(photo, trained[1], catalog, "--write", "embedded", "--keyword-parent", "auto")
    assert "written 0, unchanged 1" in err and photo.stat().st_mtime_ns == mtime


def test_sidecar_hardening(library, tmp_path):
    folder, truth, places = library
    owned = sorted(n for n, p in places.items() if p == "sidecar")
    read_only = folder / f"{owned[0]}.xmp"
    read_only.chmod(0o444)
    with pytest.raises(XmpError, match=f"{read_only}: the sidecar is read-only"):
        tag_sidecar(folder / owned[0], ["beach"], model="m")
    # a symlinked sidecar is written through the link: the link stays, its target gets the keywords
    real = tmp_path / "elsewhere.xmp"
    shutil.move(folder / f"{owned[1]}.xmp", real)
    (folder / f"{owned[1]}.xmp").symlink_to(real)
    change = tag_sidecar(folder / owned[1], ["beach"], model="m")
    assert change.written and (folder / f"{owned[1]}.xmp").is_symlink()
    assert "beach" in XmpPacket.parse(real.read_bytes()).keywords
    # a Latin-1 sidecar: the error names the file
    latin = folder / f"{owned[2]}.xmp"
    latin.write_bytes(latin.read_bytes().replace(b"</rdf:RDF>", "<!-- café -->\n</rdf:RDF>".encode("latin-1")))
    with pytest.raises(XmpError, match=f"{latin}: not UTF-8"):
        tag_sidecar(folder / owned[2], ["beach"], model="m")

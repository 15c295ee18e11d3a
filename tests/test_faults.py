"""Fault injection (issue 18): kill -9 mid-write, a full disk, a size-limited file, a read-only folder.

The invariant: nothing the user had is lost, nothing half-written is left, and every failure is named (one line on
stderr naming the output, exit 2). Every output phototag writes goes through :mod:`phototag.fileio`, so a dataset
written by ``phototag import csv`` stands for all of them.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from phototag.cli import main
from phototag.data import Dataset
from phototag.feedback import FeedbackStore
from phototag.fileio import atomic_write_text
from phototag.importers import run_importer

REPO = Path(__file__).resolve().parents[1]
N_PHOTOS = 1500


def make_photo_folder(root: Path, n: int = N_PHOTOS) -> Path:
    """``n`` photos (hard links to one small JPEG) and two CSVs tagging all of them 'sky' or 'sea'."""
    root.mkdir(parents=True, exist_ok=True)
    first = root / "p00000.jpg"
    Image.new("RGB", (8, 8), (0, 0, 200)).save(first)
    for i in range(1, n):
        os.link(first, root / f"p{i:05d}.jpg")
    for tag in ("sky", "sea"):
        lines = ["file,tags"] + [f"p{i:05d}.jpg,{tag} photo" for i in range(n)]
        (root / f"{tag}.csv").write_text("\n".join(lines) + "\n")
    return root


def assert_complete(out: Path, n: int = N_PHOTOS) -> str:
    """The dataset at ``out`` loads, has every record, and is one version (all 'sky' or all 'sea')."""
    dataset = Dataset.load(out)
    assert len(dataset.records) == n
    tags = {record.tags[0] for record in dataset.records}
    assert len(tags) == 1, tags
    return tags.pop()


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.slow
def test_kill_9_mid_write_leaves_the_previous_or_the_new_dataset_complete(tmp_path):
    photos = make_photo_folder(tmp_path / "photos")
    out = tmp_path / "ds"
    run_importer("csv", photos / "sky.csv", out)
    writer = (
        "import sys\nfrom phototag.importers import run_importer\n"
        "for i in range(10_000):\n"
        "    run_importer('csv', sys.argv[1] + ('/sea.csv' if i % 2 == 0 else '/sky.csv'), sys.argv[2])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    rng = random.Random(0)
    seen = set()
    for _ in range(4):
        process = subprocess.Popen([sys.executable, "-c", writer, str(photos), str(out)], env=env)
        time.sleep(1.0 + rng.random() * 1.5)  # import + some writes; lands at a random point of one
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        seen.add(assert_complete(out))
    print(f"\nafter 4 kills: versions seen {sorted(seen)}, temporary folders left {leftovers(out)}")
    # The next write removes what the killed writers left behind (their temporary folders).
    run_importer("csv", photos / "sky.csv", out)
    assert assert_complete(out) == "sky" and leftovers(out) == []
    assert seen  # each kill left a complete dataset (which version depends on timing)


def test_a_killed_writer_between_the_two_renames_is_undone(tmp_path):
    """The user's folder moved aside by a writer that then died is put back by the next write."""
    photos = make_photo_folder(tmp_path / "photos", n=20)
    out = tmp_path / "ds"
    run_importer("csv", photos / "sky.csv", out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = out.with_name(f".ds.{int(dead.stdout)}.old")
    os.replace(out, aside)
    (tmp_path / f".ds.{int(dead.stdout)}.x1y2").mkdir()  # its half-written temporary folder
    with pytest.raises(ValueError, match="none of the 20 image files exist"):
        _failing_write(out)
    assert assert_complete(out, 20) == "sky"
    run_importer("csv", photos / "sea.csv", out)
    assert assert_complete(out, 20) == "sea" and leftovers(out) == []


def _failing_write(out: Path) -> None:
    """A write that fails on its input: still sweeps what dead writers left at ``out`` first."""
    from phototag.fileio import atomic_directory

    with atomic_directory(out, marker="dataset.json", what="dataset"):
        raise ValueError("none of the 20 image files exist")


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_keeps_the_old_dataset_and_names_the_folder(tmp_path, capsys):
    photos = make_photo_folder(tmp_path / "photos", n=N_PHOTOS)
    small = make_photo_folder(tmp_path / "small", n=10)
    with tmpfs(tmp_path / "disk", "96k") as disk:
        out = disk / "ds"
        assert main(["import", "csv", str(small / "sky.csv"), str(out)]) == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        code = main(["import", "csv", str(photos / "sea.csv"), str(out)])
        err = capsys.readouterr().err
        assert code == 2
        assert f"Could not write the dataset '{out}' (No space left on device); nothing there was changed." in err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert assert_complete(out, 10) == "sky" and leftovers(out) == []
        # Single files (prediction files, caches) keep the same promise.
        notes = disk / "notes.txt"
        atomic_write_text(notes, "kept")
        with pytest.raises(OSError, match=rf"Could not write the file '{notes}' \(No space left on device\)"):
            atomic_write_text(notes, "x" * 200_000)
        assert notes.read_text() == "kept" and leftovers(notes) == []


def test_size_limited_file_fails_cleanly(tmp_path):
    """RLIMIT_FSIZE (works without root): a write past the limit fails with EFBIG, named, nothing changed."""
    photos = make_photo_folder(tmp_path / "photos", n=N_PHOTOS)
    small = make_photo_folder(tmp_path / "small", n=10)
    out = tmp_path / "ds"
    run_importer("csv", small / "sky.csv", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    result = subprocess.run(
        [sys.executable, "-m", "phototag.cli", "import", "csv", str(photos / "sea.csv"), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        preexec_fn=limit,
    )
    assert result.returncode == 2, result.stderr
    assert f"Could not write the dataset '{out}' (File too large); nothing there was changed." in result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and leftovers(out) == []


def test_read_only_folder_is_named_and_untouched(tmp_path, capsys):
    small = make_photo_folder(tmp_path / "small", n=10)
    with tmpfs(tmp_path / "ro", "1m") as folder:
        out = folder / "ds"
        run_importer("csv", small / "sky.csv", out)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
        if remounted.returncode != 0:
            pytest.skip("cannot remount read-only here")
        code = main(["import", "csv", str(small / "sea.csv"), str(out)])
        err = capsys.readouterr().err
        assert code == 2 and f"Could not write the dataset '{out}' (Read-only file system)" in err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        with pytest.raises(ValueError, match=rf"Feedback database '{folder}/fb.sqlite' cannot be opened"):
            FeedbackStore(folder / "fb.sqlite")

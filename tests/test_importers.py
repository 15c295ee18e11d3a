"""Importers on the real data in ../shared/data (skipped when absent) and on small hand-made sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from phototag.data import Dataset
from phototag.importers import MIRFLICKR_LABELS, RawDataError, list_importers, run_importer


def test_importer_registry():
    assert list_importers() == ["corel5k", "csv", "harrison", "library", "mirflickr"]
    with pytest.raises(ValueError, match="Unknown dataset kind 'flickr'.*corel5k"):
        run_importer("flickr", ".", "out")


def test_corel5k_real(corel5k_dir, tmp_path):
    from scipy.io import loadmat

    dataset = run_importer("corel5k", corel5k_dir, tmp_path / "corel")
    assert len(dataset) == 4500 and dataset.split_counts() == {"train": 4500, "val": 0, "test": 0}
    assert len(dataset.vocab) == 260
    words = (corel5k_dir / "corel5k_words.txt").read_text().split()
    annot = loadmat(corel5k_dir / "corel5k_train_annot.mat")["annot1"]
    first = dataset.records[0]
    assert first.id == "1000/1000" and dataset.image_path(first).is_file()
    assert first.tags == [words[j] for j in np.flatnonzero(annot[0])]
    assert dataset.vocab.transform([r.tags for r in dataset.records]).sum() == annot.sum()
    reloaded = Dataset.load(tmp_path / "corel")
    assert [r.tags for r in reloaded.records] == [r.tags for r in dataset.records]
    assert json.loads((tmp_path / "corel" / "dataset.json").read_text())["info"]["import"]["missing_files"] == 0


def _fake_corel(root, n=4, missing=1):
    from scipy.io import savemat

    root.mkdir()
    (root / "corel5k_words.txt").write_text("sky\nsea\nsun\n")
    ids = [f"1/{i}" for i in range(n)]
    (root / "corel5k_test_list.txt").write_text("\n".join(ids) + "\n")
    savemat(root / "corel5k_test_annot.mat", {"annot2": np.eye(n, 3, dtype=np.uint16) + np.eye(n, 3, 1, np.uint16)})
    (root / "1").mkdir()
    for image_id in ids[missing:]:
        Image.new("RGB", (8, 8)).save(root / f"{image_id}.jpeg")
    return root


def test_corel5k_test_split_only_and_missing_files_are_counted(tmp_path):
    src = _fake_corel(tmp_path / "raw")
    # Only a test split: nothing to train on is a clear error...
    with pytest.raises(RawDataError, match="no training records"):
        run_importer("corel5k", src, tmp_path / "out")
    # ...and with a train split too, the missing photo is reported, not silently dropped.
    (src / "corel5k_train_list.txt").write_text("2/5\n2/6\n")
    (src / "2").mkdir()
    for name in ("5", "6"):
        Image.new("RGB", (8, 8)).save(src / "2" / f"{name}.jpeg")
    from scipy.io import savemat

    savemat(src / "corel5k_train_annot.mat", {"annot1": np.array([[1, 0, 0], [0, 1, 1]], dtype=np.uint16)})
    dataset = run_importer("corel5k", src, tmp_path / "out")
    assert dataset.split_counts() == {"train": 2, "val": 0, "test": 3}
    report = dataset.info["import"]
    assert report["records_in"] == 6 and report["records_out"] == 5 and report["missing_files"] == 1
    assert report["missing_examples"][0].endswith("1/0.jpeg")


def test_corel5k_shape_mismatch(tmp_path):
    src = _fake_corel(tmp_path / "raw", missing=0)
    (src / "corel5k_words.txt").write_text("sky\nsea\n")
    with pytest.raises(RawDataError, match=r"shape \(4, 3\), expected \(4, 2\)"):
        run_importer("corel5k", src, tmp_path / "out")


def test_harrison_real(shared_data, tmp_path):
    src = shared_data / "harrison"
    dataset = run_importer("harrison", src, tmp_path / "h")
    assert len(dataset) == 57383 and not dataset.has_images()
    counts = dataset.split_counts()
    assert counts["train"] == round(0.8 * 57383) and counts["val"] == round(0.1 * 57383)
    first = dataset.records[0]
    assert first.tags == ["sea", "instapic", "instagram", "trip", "travel"] and first.user_tags == first.tags
    assert first.meta["category"] == "sea"
    again = run_importer("harrison", src, tmp_path / "h2")
    assert [r.split for r in again.records] == [r.split for r in dataset.records]  # seeded split
    assert 900 <= len(dataset.vocab) <= 997


def test_mirflickr_real(shared_data, tmp_path):
    dataset = run_importer("mirflickr", shared_data / "mirflickr25k", tmp_path / "m", options={"layout": "matrices"})
    assert len(dataset) == 20015 and dataset.vocab.tags_ and set(dataset.vocab.tags_) == set(MIRFLICKR_LABELS)
    assert all(t.startswith("utag") for r in dataset.records[:50] for t in r.user_tags)
    assert sum(bool(r.user_tags) for r in dataset.records) > 15000


def _csv_photos(tmp_path, text):
    for name in ("a.jpg", "b.png", "sub/c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / name)
    (tmp_path / "photos.csv").write_text(text)
    return tmp_path / "photos.csv"


def test_csv_import(tmp_path):
    csv_file = _csv_photos(
        tmp_path,
        "file,tags,user_tags,split\n"
        "a.jpg,sky new+york,#NYC,train\n"
        "b.png,sea%20shore sky,,val\n"
        "sub/c.jpg,sky,me,\n"
        "gone.jpg,sky,,train\n",
    )
    dataset = run_importer("csv", csv_file, tmp_path / "ds")
    assert [r.split for r in dataset.records] == ["train", "val", "train"]
    assert dataset.vocab.tags_ == ["sky", "new york"]
    assert dataset.records[0].user_tags == ["#NYC"] and dataset.records[1].tags == ["sea%20shore", "sky"]
    assert dataset.info["import"]["missing_files"] == 1
    assert dataset.image_path(dataset.records[2]) == tmp_path / "sub" / "c.jpg"


@pytest.mark.parametrize(
    "text,message",
    [
        ("path,labels\na.jpg,sky\n", r"expected columns 'file,tags'.*Got columns \['path', 'labels'\]"),
        ("file,tags\n", "no rows"),
        ("file,tags,split\na.jpg,sky,training\n", r"line 2: split must be one of"),
        ("file,tags\nx.jpg,sky\ny.jpg,sea\n", "none of the 2 image files exist"),
        ("file,tags,id\na.jpg,sky,1\nb.png,sky,1\n", "id '1' appears twice"),
        ("file,tags\n../../etc/passwd,sky\n", r"line 2: file '../../etc/passwd' is outside the CSV's folder"),
        ("file,tags\n/etc/passwd,sky\n", r"line 2: file '/etc/passwd' is outside the CSV's folder"),
        ("file,tags\nsub/../../x.jpg,sky\n", "is outside the CSV's folder"),
        ("file,tags,id\na.jpg,sky,1\n./a.jpg,sea,2\n", r"line 3: file './a.jpg' is the same photo as id '1'"),
        ("file,tags,id\na.jpg,sky,1\nsub/../a.jpg,sea,2\n", "is the same photo as id '1'"),
        ('file,tags\na.jpg,"sky\nsea"\n', r"line 3: the 'tags' cell spans several lines"),
        ("file,tags\na.jpg,sky\x00sea\n", r"line 2: the 'tags' cell holds the control character '\\x00'"),
        ('file,tags\na.jpg,"sky\n', r"photos.csv line \d+: not valid CSV"),
    ],
)
def test_csv_bad_input(tmp_path, text, message):
    csv_file = _csv_photos(tmp_path, text)
    with pytest.raises(ValueError, match=message):
        run_importer("csv", csv_file, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_csv_errors_name_the_file(tmp_path):
    csv_file = _csv_photos(tmp_path, "")
    csv_file.write_bytes("file,tags\na.jpg,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"photos.csv: not a UTF-8 text file \(byte 19: invalid"):
        run_importer("csv", csv_file, tmp_path / "ds")


def test_csv_absolute_path_inside_the_folder_is_kept(tmp_path):
    csv_file = _csv_photos(tmp_path, "")
    csv_file.write_text(f"file,tags\n{tmp_path / 'a.jpg'},sky\nb.png,sea\n")
    dataset = run_importer("csv", csv_file, tmp_path / "ds")
    assert [r.tags for r in dataset.records] == [["sky"], ["sea"]]


def test_dataset_format_errors(tmp_path):
    from phototag.data import DatasetFormatError

    with pytest.raises(DatasetFormatError, match="does not exist"):
        Dataset.load(tmp_path / "none")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "dataset.json").write_text('{"format": "phototag-dataset", "format_version": 0}')
    with pytest.raises(DatasetFormatError, match="version 0.*Re-import"):
        Dataset.load(tmp_path / "old")


def test_train_val_carve_is_seeded_and_disjoint(synthetic_dataset):
    dataset = Dataset.load(synthetic_dataset)
    dataset.records = [r for r in dataset.records if r.split == "train"]
    train, val = dataset.train_val(val_fraction=0.25, seed=1)
    again_train, again_val = dataset.train_val(val_fraction=0.25, seed=1)
    assert len(val) == 12 and len(train) == 36 and {r.id for r in val} == {r.id for r in again_val}
    assert not {r.id for r in train} & {r.id for r in val}

"""`phototag import mirflickr` on the photo layout (images, user tags, label lists) and `evaluate --against`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import draw_photo
from phototag.cli import main
from phototag.data import Dataset
from phototag.importers import RawDataError, import_mirflickr, read_label_lists, refinement_paper_tags, run_importer
from phototag.labels import evaluate_labels, label_score_matrix, label_truth
from phototag.metrics import mean_average_precision

pytest.importorskip("simplemma")

# Photo n is red-circle ("cloudy" sky) when n is odd, blue-square (a dog) when even.
N_PHOTOS = 60


@pytest.fixture(scope="module")
def mirflickr_copy(tmp_path_factory) -> Path:
    """A tiny copy of the MIRFLICKR-25K layout whose labels and user tags follow from the pixels."""
    root = tmp_path_factory.mktemp("mirflickr-copy")
    photos, tags, labels = (
        root / "mirflickr",
        root / "mirflickr" / "meta" / "tags",
        root / "mirflickr25k_annotations_v080",
    )
    tags.mkdir(parents=True)
    labels.mkdir()
    rng = np.random.default_rng(0)
    lists: dict[str, list[int]] = {"clouds": [], "clouds_r1": [], "dog": [], "dog_r1": [], "sky": [], "baby_r1": []}
    for n in range(1, N_PHOTOS + 1):
        cloudy = n % 2 == 1
        draw_photo("red" if cloudy else "blue", "circle" if cloudy else "square", rng).save(photos / f"im{n}.jpg")
        user = ["Clouds", "nikond80", "sunsets", "2007"] if cloudy else ["dogs", "puppy", "canon"]
        (tags / f"tags{n}.txt").write_text("\n".join(user) + "\n")
        for name in ["clouds", "clouds_r1", "sky"] if cloudy else ["dog"] + (["dog_r1"] if n % 4 == 0 else []):
            lists[name].append(n)
    for name, numbers in lists.items():
        (labels / f"{name}.txt").write_text("".join(f"{n}\n" for n in numbers))
    (labels / "README.txt").write_text("not a label list\n")
    (tags / f"tags{N_PHOTOS + 1}.txt").write_text("orphan\n")  # a tag file whose photo is missing
    return root


def test_label_lists(mirflickr_copy):
    lists = read_label_lists(mirflickr_copy / "mirflickr25k_annotations_v080")
    assert sorted(lists["labels"]) == ["clouds", "dog", "sky"]
    assert sorted(lists["labels-r1"]) == ["baby", "clouds", "dog"]
    assert lists["labels-r1"]["dog"] == {n for n in range(4, N_PHOTOS + 1, 4)} and not lists["labels-r1"]["baby"]


def test_refinement_paper_tags():
    assert refinement_paper_tags(["Dogs", "nikond80", "clouds", "2007", "dog"], aliases={"cloud": "clouds"}) == [
        "dog",
        "clouds",
    ]
    assert refinement_paper_tags(["nikond80"], lexicon=False) == ["nikond80"]
    # Parent words follow the tags; a parent named like a label is kept under the label's name.
    assert refinement_paper_tags(["Girls", "nikond80"], parents=True) == ["girl", "woman", "adult", "female"]
    assert refinement_paper_tags(["cumulus"], parents=True, aliases={"cloud": "clouds"}) == ["cumulus", "clouds"]
    # Only the allowed parents (the importer's default allows the label names): girl -> female, not woman or adult.
    assert refinement_paper_tags(["Girls", "puppy"], parents={"female", "dog"}) == ["girl", "puppy", "female", "dog"]


def test_parent_words_table():
    from phototag.vocab import PARENT_WORDS_FILE, parent_words, with_parent_words

    assert PARENT_WORDS_FILE.stat().st_size < 400_000  # ships in the wheel
    assert parent_words("man") == ("adult", "male") and parent_words("boy") == ("male",)
    assert parent_words("puppy") == ("dog", "pup", "canine")
    assert parent_words("sunset") == parent_words("") == ()  # not a physical thing / not a word
    assert with_parent_words(["boy", "man", "boy"]) == ["boy", "man", "male", "adult"]


def test_photo_layout_user_tag_targets(mirflickr_copy, tmp_path):
    dataset = run_importer("mirflickr", mirflickr_copy, tmp_path / "ds", options={"parents": False})
    assert len(dataset) == N_PHOTOS and dataset.has_images()
    first = next(r for r in dataset.records if r.id == "im1")
    assert first.file == "mirflickr/im1.jpg" and (mirflickr_copy / first.file).is_file()
    assert first.user_tags == ["Clouds", "nikond80", "sunsets", "2007"]
    # Lemmatised, English words only; the label name's lemma is kept under the label's name.
    assert first.tags == ["clouds", "sunset"]
    assert first.meta == {"image_number": 1, "labels": ["clouds", "sky"], "labels_r1": ["clouds"]}
    four = next(r for r in dataset.records if r.id == "im4")
    assert four.tags == ["dog", "puppy", "canon"] and four.meta["labels_r1"] == ["dog"]
    assert "canon" not in dataset.vocab and set(dataset.vocab.tags_) == {"clouds", "sunset", "dog", "puppy"}
    report = dataset.info["import"]
    assert report["missing_files"] == 1 and report["missing_examples"][0].endswith(f"im{N_PHOTOS + 1}.jpg")
    assert dataset.info["label_names"] == {"labels": ["clouds", "dog", "sky"], "labels-r1": ["baby", "clouds", "dog"]}
    saved = Dataset.load(tmp_path / "ds")
    assert saved.records[0].meta == dataset.records[0].meta


def test_parent_words_are_added_by_default(mirflickr_copy, tmp_path, capsys):
    argv = ["import", "mirflickr", str(mirflickr_copy)]
    assert main([*argv, str(tmp_path / "ds"), "--min-count", "1", "--parents", "all"]) == 0
    dataset = Dataset.load(tmp_path / "ds")
    four = next(r for r in dataset.records if r.id == "im4")
    assert four.tags == ["dog", "puppy", "canon", "canine", "carnivore", "animal", "pup"]
    assert {"canine", "animal"} <= set(dataset.vocab.tags_) and "parent words" in dataset.info["preprocessing"]
    # The default adds only parents that name a label: puppy -> dog (there already), not canine or animal.
    assert main([*argv, str(tmp_path / "ds1"), "--min-count", "1"]) == 0
    default = Dataset.load(tmp_path / "ds1")
    assert next(r for r in default.records if r.id == "im4").tags == ["dog", "puppy", "canon"]
    assert "that name a label" in default.info["preprocessing"]
    assert main([*argv, str(tmp_path / "ds2"), "--no-parents"]) == 0
    assert "animal" not in Dataset.load(tmp_path / "ds2").vocab
    assert main(["import", "csv", str(tmp_path / "x.csv"), str(tmp_path / "ds3"), "--parents", "all"]) == 2
    assert "--parents apply to 'phototag import mirflickr' only" in capsys.readouterr().err
    with pytest.raises(ValueError, match="parents must be one of labels, all, none"):
        run_importer("mirflickr", mirflickr_copy, tmp_path / "ds4", options={"parents": "some"})


def test_min_fraction_drops_rare_tags(mirflickr_copy, tmp_path):
    (mirflickr_copy / "mirflickr" / "meta" / "tags" / "tags3.txt").write_text("Clouds\nzebra\n")
    try:
        dataset = run_importer("mirflickr", mirflickr_copy, tmp_path / "ds", options={"min_fraction": 0.05})
        assert dataset.vocab.min_count == 3 and "zebra" not in dataset.vocab  # 5 % of 48 training photos
        kept = run_importer("mirflickr", mirflickr_copy, tmp_path / "ds2", vocab_settings={"min_count": 1})
        assert "zebra" in kept.vocab  # an explicit --min-count beats the 0.1 % rule
    finally:
        (mirflickr_copy / "mirflickr" / "meta" / "tags" / "tags3.txt").write_text("Clouds\nnikond80\nsunsets\n2007\n")


def test_paper_cnn_cleaning_reads_the_raw_tags(mirflickr_copy, tmp_path):
    # The VGG16-tagger paper cleans the raw tags (no lemmas, no lexicon): digits and camera brands go, plurals stay.
    argv = ["import", "mirflickr", str(mirflickr_copy), str(tmp_path / "ds"), "--clean", "paper-cnn"]
    argv += ["--min-count", "2"]
    assert main(argv) == 0
    dataset = Dataset.load(tmp_path / "ds")
    first = next(r for r in dataset.records if r.id == "im1")
    assert first.tags == ["clouds", "nikond80", "sunsets", "2007"]
    assert set(dataset.vocab.tags_) == {"clouds", "sunsets", "dogs", "puppy"}
    assert dataset.info["preprocessing"].startswith("VGG16-tagger paper")
    with pytest.raises(ValueError, match="clean must be"):
        import_mirflickr(mirflickr_copy, clean="strict")


@pytest.mark.parametrize(("targets", "expected"), [("labels", ["clouds", "sky"]), ("labels-r1", ["clouds"])])
def test_label_targets(mirflickr_copy, targets, expected):
    dataset = import_mirflickr(mirflickr_copy, targets=targets, max_images=10)
    assert len(dataset) == 10 and dataset.records[0].tags == expected
    assert dataset.info["import"]["missing_files"] == 0


def test_bad_layouts(mirflickr_copy, tmp_path):
    with pytest.raises(ValueError, match="targets must be one of"):
        import_mirflickr(mirflickr_copy, targets="words")
    (tmp_path / "mirflickr").mkdir()
    with pytest.raises(RawDataError, match="meta/tags is missing"):
        import_mirflickr(tmp_path)
    with pytest.raises(RawDataError, match="mirflickr25k-yall.mat is missing"):
        import_mirflickr(tmp_path, layout="matrices")


def test_label_scores_by_same_name_tag():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.1, 0.7, 0.9]])
    label_scores, missing = label_score_matrix(["clouds", "dog", "plant life"], scores, ["dog", "plant_life", "baby"])
    assert missing == ["baby"]
    np.testing.assert_allclose(label_scores, [[0.1, 0.3, 0], [0.8, 0.4, 0], [0.7, 0.9, 0]])
    truth = np.array([[0, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=np.float32)
    result = evaluate_labels(truth, label_scores, ["dog", "plant_life", "baby"])
    # dog is ranked perfectly; plant_life's positives sit at ranks 1 and 3; baby's constant score gives its prevalence.
    assert result["ap_dog"] == 1.0 and result["ap_plant_life"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["ap_baby"] == pytest.approx(1 / 3)
    assert result["map"] == pytest.approx(mean_average_precision(truth, label_scores))


def test_evaluate_against_labels_cli(mirflickr_copy, tmp_path, feature_cache, capsys):
    out = tmp_path / "ds"
    assert main(["-q", "import", "mirflickr", str(mirflickr_copy), str(out)]) == 0
    model = tmp_path / "model"
    argv = ["-q", "train", str(out), "--method", "knn", "--out", str(model), "--cache-dir", str(feature_cache)]
    assert main(argv) == 0
    capsys.readouterr()
    report = tmp_path / "r1.json"
    argv = ["-q", "evaluate", str(model), str(out), "--against", "labels-r1", "--json", str(report)]
    assert main([*argv, "--cache-dir", str(feature_cache)]) == 0
    result = json.loads(report.read_text())
    assert result["labels_without_tag"] == "baby" and result["n_labels"] == 3
    # The pixels decide cloudy vs dog, so the kNN tagger ranks those labels perfectly on unseen photos.
    assert result["ap_clouds"] == 1.0 and np.isnan(result["ap_baby"])
    dataset = Dataset.load(out)
    truth = label_truth(dataset.split("test"), ["baby", "clouds", "dog"], "labels-r1")
    assert result["n_images"] == len(truth) == 6
    capsys.readouterr()
    assert main(["-q", "import", "corel5k", str(mirflickr_copy), str(tmp_path / "x"), "--targets", "labels"]) == 2
    assert "apply to 'phototag import mirflickr' only" in capsys.readouterr().err


@pytest.fixture(scope="module")
def real_slice(shared_data) -> Path:
    path = shared_data / "mirflickr25k"
    if not (path / "mirflickr" / "meta" / "tags").is_dir():
        pytest.skip(f"MIRFLICKR-25K photos not available at {path}")
    return path


def test_real_layout_slice(real_slice):
    dataset = import_mirflickr(real_slice, max_images=500)
    assert len(dataset) == 500 and dataset.info["import"]["missing_files"] == 0
    assert dataset.info["label_names"]["labels-r1"] == [
        "baby", "bird", "car", "clouds", "dog", "female", "flower", "male", "night", "people", "portrait", "river",
        "sea", "tree",
    ]  # fmt: skip
    assert len(dataset.info["label_names"]["labels"]) == 24
    first = dataset.records[0]
    assert first.id == "im1" and first.user_tags[:3] == ["governorsisland", "cigarette", "tattoos"]
    assert first.tags[:3] == ["cigarette", "tattoo", "smoke"]  # governorsisland is no English word
    assert first.meta["labels_r1"] == ["female", "people", "portrait"]
    assert all(set(r.meta["labels_r1"]) <= set(dataset.info["label_names"]["labels-r1"]) for r in dataset.records)


def test_real_matrix_layout_still_reads(real_slice):
    dataset = import_mirflickr(real_slice, layout="matrices")
    assert len(dataset) == 20015 and dataset.info["layout"] == "matrices"


def test_paper_cnn_cleaning_is_an_option():
    from phototag.vocab import TagVocabulary

    lists = [["route66", "mycanon", "sky", "2007"]] * 2
    assert TagVocabulary().fit(lists).tags_ == ["route66", "mycanon", "sky"]
    assert TagVocabulary(drop_with_digits=True, camera_substrings=True).fit(lists).tags_ == ["sky"]

"""The SQLite feedback store and its export as a phototag dataset a model can learn from."""

from __future__ import annotations

import io
import sqlite3

import pytest
from PIL import Image

from phototag.data import Dataset
from phototag.feedback import FeedbackStore, feedback_to_dataset


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_latest_decision_wins_and_bad_input_is_refused(tmp_path):
    with FeedbackStore(tmp_path / "db" / "feedback.sqlite") as store:
        red = store.add_image(png((255, 0, 0)), name="red.png", content_type="image/png", user_tags=["#Red"])
        assert store.add_image(png((255, 0, 0)), name="again.png", content_type="image/png") == red  # stored once
        store.add_decision(red, "red", "accept")
        store.add_decision(red, "blue", "accept")
        store.add_decision(red, "blue", "reject")
        store.add_decision(red, "square", "accept")
        store.add_decision(red, "square", "clear")
        with pytest.raises(ValueError, match="decision must be one of"):
            store.add_decision(red, "red", "like")
        with pytest.raises(KeyError):
            store.add_decision("f" * 40, "red", "accept")
        [example] = store.examples()
        assert (example.accepted, example.rejected, example.user_tags) == (["red"], ["blue"], ["#Red"])
        assert store.summary() == {"images": 1, "decisions": 5, "images_with_accepted_tags": 1}
    with sqlite3.connect(tmp_path / "db" / "feedback.sqlite") as conn:  # a plain SQLite file any tool can read
        assert conn.execute("SELECT COUNT(*) FROM decisions WHERE decision = 'accept'").fetchone() == (3,)


def test_export_writes_a_loadable_dataset_with_the_photos(tmp_path):
    db = tmp_path / "feedback.sqlite"
    with FeedbackStore(db) as store:
        green, blue = png((0, 200, 0)), png((0, 0, 200))
        g = store.add_image(green, name="g.png", content_type="image/png")
        b = store.add_image(blue, name="b.jpg", content_type="image/png")
        nothing = store.add_image(png((9, 9, 9)), name="n.png", content_type="image/png")
        store.add_decision(g, "green", "accept")
        store.add_decision(g, "circle", "reject")
        store.add_decision(b, "blue", "accept")
        store.add_decision(nothing, "green", "reject")
    dataset, report = feedback_to_dataset(db, tmp_path / "out")
    assert report == {
        "images": 3,
        "exported": 2,
        "skipped_no_accepted": 1,
        "accepted_tags": 2,
        "rejected_tags": 2,
        "invalid_tags_dropped": 0,
    }
    loaded = Dataset.load(tmp_path / "out")
    assert [(r.tags, r.meta["rejected"], r.split) for r in loaded.records] == [
        (["green"], ["circle"], "train"),
        (["blue"], [], "train"),
    ]
    assert loaded.image_path(loaded.records[0]).read_bytes() == green
    assert loaded.image_path(loaded.records[1]).suffix == ".png"  # named by content type, not the upload name
    assert loaded.vocab.tags_ == dataset.vocab.tags_ and set(loaded.vocab.tags_) == {"green", "blue"}
    assert loaded.info["export"]["skipped_no_accepted"] == 1


def test_export_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        feedback_to_dataset(tmp_path / "missing.sqlite", tmp_path / "out")
    db = tmp_path / "empty.sqlite"
    with FeedbackStore(db) as store:
        store.add_image(png((1, 2, 3)), name="x.png", content_type="image/png")
    with pytest.raises(ValueError, match="none with an accepted tag"):
        feedback_to_dataset(db, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_feedback_command_summary_and_export(tmp_path, capsys):
    from phototag.cli import main

    db = tmp_path / "feedback.sqlite"
    with FeedbackStore(db) as store:
        store.add_decision(store.add_image(png((0, 0, 200)), name="b.png", content_type="image/png"), "blue", "accept")
    assert main(["feedback", "summary", str(db)]) == 0
    assert '"images": 1, "decisions": 1' in capsys.readouterr().out
    assert main(["feedback", "export", str(db), "--out", str(tmp_path / "ds")]) == 0
    assert "1 photo(s) with 1 accepted tag(s)" in capsys.readouterr().out
    assert Dataset.load(tmp_path / "ds").records[0].tags == ["blue"]
    assert main(["feedback", "export", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_update_learns_accepted_tags_from_the_feedback_database(synthetic_dataset, synthetic_photos, tmp_path, capsys):
    """`phototag update MODEL --feedback DB`: a tag accepted on the web page becomes a tag the model predicts."""
    from phototag.cli import main
    from phototag.model import load_model

    model_dir = tmp_path / "knn"
    assert (
        main(
            [
                "-q",
                "train",
                str(synthetic_dataset),
                "--method",
                "knn",
                "--set",
                "k=5",
                "--out",
                str(model_dir),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    assert "favourite" not in load_model(model_dir).tags
    photos = sorted((synthetic_photos / "img" / "test").iterdir())[:3]
    db = tmp_path / "feedback.sqlite"
    with FeedbackStore(db) as store:
        for photo in photos:
            image_id = store.add_image(photo.read_bytes(), name=photo.name, content_type="image/png")
            store.add_decision(image_id, "favourite", "accept")
    assert main(["-q", "update", str(model_dir), "--feedback", str(db), "--cache-dir", str(tmp_path / "cache")]) == 0
    model = load_model(model_dir)
    assert model.tags[-1] == "favourite" and model.info["updates"][-1]["n_images"] == 3
    predictions, failures = model.predict([photos[0]], top_k=1, cache_dir=tmp_path / "cache")
    assert not failures and predictions[0]["tags"][0]["tag"] == "favourite"  # its own photo is its nearest neighbour
    capsys.readouterr()
    assert main(["-q", "update", str(model_dir)]) == 2
    assert "Give DATASET_DIR, --feedback DB" in capsys.readouterr().err

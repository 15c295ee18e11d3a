"""The spine's quality targets on real photos (../shared/data; skipped cleanly when it is absent)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from phototag.metrics import per_tag_at_k

pytestmark = pytest.mark.slow

#: Distinctive scene and object words of Corel5k: a small natural-scene set with a folder of photos and a CSV.
SCENE_WORDS = ("tiger", "flowers", "snow", "sand", "plane", "cars", "horses", "bear")


def test_knn_on_corel5k_heldout_photos(corel5k_features):
    from phototag.methods import create_method

    dataset, x, y, train, test = corel5k_features
    knn = create_method("knn").fit({"features": x[train]}, y[train], progress=False)
    result = per_tag_at_k(y[test], knn.score({"features": x[test]}), k=5)
    # The bar (and published JEC: F1 0.293, N+ 139); measured 0.411 / 152 with the default settings.
    assert result["f1"] >= 0.33 and result["n_plus"] >= 140, result


def test_default_method_on_a_natural_scene_folder_and_csv(corel5k_dir, tmp_path, real_feature_cache, capsys):
    """`phototag import csv` + `phototag train` (no --method) + `phototag evaluate` on real photos: mAP >= 0.85."""
    from scipy.io import loadmat

    from phototag.cli import main

    words = (corel5k_dir / "corel5k_words.txt").read_text().split()
    ids = (corel5k_dir / "corel5k_train_list.txt").read_text().split()
    annot = loadmat(corel5k_dir / "corel5k_train_annot.mat")["annot1"]
    columns = [words.index(w) for w in SCENE_WORDS]
    rows = np.flatnonzero(annot[:, columns].sum(axis=1) > 0)
    splits = np.where(np.random.default_rng(0).random(len(rows)) < 0.75, "train", "test")
    (tmp_path / "photos").symlink_to(corel5k_dir, target_is_directory=True)
    with open(tmp_path / "photos.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "tags", "split"])
        for row, split in zip(rows, splits, strict=True):
            tags = " ".join(w for w, c in zip(SCENE_WORDS, columns, strict=True) if annot[row, c])
            writer.writerow([f"photos/{ids[row]}.jpeg", tags, split])
    cache = ["--cache-dir", str(real_feature_cache)]
    assert main(["-q", "import", "csv", str(tmp_path / "photos.csv"), str(tmp_path / "ds")]) == 0
    assert main(["-q", "train", str(tmp_path / "ds"), "--out", str(tmp_path / "model"), *cache]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(tmp_path / "model"),
                str(tmp_path / "ds"),
                "--json",
                str(tmp_path / "m.json"),
                *cache,
            ]
        )
        == 0
    )
    import json

    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_images"] == int((splits == "test").sum()) and metrics["n_tags"] == len(SCENE_WORDS)
    assert metrics["map"] >= 0.85, metrics


def test_default_model_recipe_on_corel5k_heldout_photos(corel5k_heldout, real_feature_cache):
    """The shipped model's recipe (its Corel5k part: the ensemble's ``default-model`` preset, which
    scripts/build_default_model.py trains) on the 4,000 photos left after holding out 500, measured on those 500
    (never seen in training or calibration). The shipped model trains on all 4,500, so this is the check: balanced
    top 5 (its default) beats plain top 5 on both F1@5 and N+, keeps each photo's best tag, and leaves the scores
    (mAP, the 0.3 rule) alone."""
    from phototag.pipeline import evaluate, train
    from phototag.presets import preset_config

    model = train(
        corel5k_heldout,
        method="ensemble",
        config=preset_config("ensemble", "default-model"),
        val_fraction=0.0,
        cache_dir=real_feature_cache,
        progress=False,
    )
    assert model.decision.balanced  # the preset's balanced=true
    balanced = evaluate(model, corel5k_heldout, split="test", k=5, progress=False, cache_dir=real_feature_cache)
    plain = evaluate(
        model, corel5k_heldout, split="test", k=5, balanced=False, progress=False, cache_dir=real_feature_cache
    )
    assert balanced["n_images"] == 500 and balanced["unreadable_images"] == 0
    # Measured when it was built (2026-12-02, eight members): F1@5 0.500 / N+ 185 balanced, 0.471 / 165 plain (the
    # four-member recipe before it: 0.489 / 181, 0.454 / 161). The balancing was chosen on 5 folds of the training
    # photos, where it lifted both.
    assert balanced["tag@5_f1"] >= 0.47, balanced
    assert balanced["tag@5_f1"] >= plain["tag@5_f1"], (plain, balanced)
    assert balanced["tag@5_n_plus"] >= plain["tag@5_n_plus"] + 10, (plain, balanced)
    for key in ("map", "image_f1_mean", "miap"):
        assert balanced[key] == plain[key]


def test_shipped_default_model_records_its_check_and_tags_corel5k_photos(corel5k_heldout):
    """The shipped default model: balanced top-k by default; the numbers of its recipe's check on the 500 held-out
    photos are recorded in it (``info.heldout``, ``info.heldout_plain``); it loads with its own backbone graphs and
    tags those photos (now among its training photos: it trains on all 4,500) at least as well as the check."""
    from phototag.model import load_model
    from phototag.pipeline import evaluate

    model = load_model()
    assert model.decision.balanced and model.method.rank_offset() is not None
    recorded, plain = model.info["heldout"], model.info["heldout_plain"]
    assert recorded["n_images"] == 500 and recorded["tag@5_f1"] >= 0.45, recorded
    assert recorded["tag@5_n_plus"] >= plain["tag@5_n_plus"] + 10, (plain, recorded)
    assert recorded["map"] == plain["map"]
    assert "4,500" in model.info["dataset"] and "500" in model.info["heldout_measured_on"]
    result = evaluate(model, corel5k_heldout, split="test", k=5, progress=False)
    assert result["n_images"] == 500 and result["unreadable_images"] == 0
    assert result["tag@5_f1"] >= recorded["tag@5_f1"] and result["map"] >= recorded["map"], result


def test_default_model_balanced_top_k_keeps_each_photos_best_tag(corel5k_heldout):
    """Balanced top 5 on the shipped model: each photo's best-scoring keyword stays first, the tags are listed by
    score, the others change on many photos, and the scores are the plain ones. (Whether that finds more words is
    checked on photos the model never saw, by the recipe test above: these are among the shipped model's training
    photos.)"""
    from phototag.inputs import build_inputs
    from phototag.metrics import evaluate_scores
    from phototag.model import load_model
    from phototag.runtime import RunOptions

    model = load_model()
    records = corel5k_heldout.split("test")[:200]
    batch = build_inputs(
        model.method,
        [corel5k_heldout.image_path(r) for r in records],
        options=RunOptions(progress=False),
        search=[model.path / "backbones"],
    )
    assert batch.ok.all()
    scores = model.score_inputs(batch.inputs)
    names = [r.id for r in records]
    balanced = model.format_predictions(names, scores, top_k=5)
    plain = model.format_predictions(names, scores, top_k=5, balanced=False)
    keywords = ~model.decision.category_mask(len(model.tags))
    changed = 0
    for row, b, p in zip(scores, balanced, plain, strict=True):
        chosen = [t for t in b["tags"] if keywords[model.tags.index(t["tag"])]]
        assert len(chosen) == 5
        assert chosen[0]["tag"] == p["tags"][0]["tag"] == model.tags[int(np.argmax(np.where(keywords, row, -1)))]
        assert [t["score"] for t in chosen] == sorted((t["score"] for t in chosen), reverse=True)
        changed += {t["tag"] for t in chosen} != {t["tag"] for t in p["tags"] if keywords[model.tags.index(t["tag"])]}
    assert changed >= 50, changed
    truth = model.vocab.transform([r.tags for r in records])
    columns = model.method.columns_[0]
    both = [
        evaluate_scores(truth[:, columns], scores[:, columns], k=5, ranking_scores=ranking)
        for ranking in (model.ranking_scores(scores, columns=columns), None)
    ]
    assert both[0]["tag@5_f1"] != both[1]["tag@5_f1"]
    for key in ("map", "image_f1_mean", "miap"):
        assert both[0][key] == both[1][key]

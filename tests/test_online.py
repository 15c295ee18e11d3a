"""Online learning: `phototag update` adds new images and brand-new tags; old tags keep their quality."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from phototag.cli import main
from phototag.methods import create_method
from phototag.metrics import mean_average_precision, per_tag_at_k
from phototag.model import TagModel
from phototag.online import update_model
from phototag.vocab import TagVocabulary

DREL_SYNTHETIC = [
    "backbones=[]",
    "latent_dim=64",
    "image_hidden=128",
    "tag_hidden=32",
    "tag_dim=16",
    "activation=relu",
    "max_epochs=100",
    "patience=30",
    "lr=0.003",
    "dropout=0.2",
]


def write_csv(photos: Path, out: Path, keep) -> Path:
    """A CSV of the synthetic photos whose row passes ``keep``, written beside them (``import csv`` reads only files
    in the CSV's folder or below); ``out`` names it, its folder keeps it apart from other tests' CSVs."""
    with open(photos / "photos.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if keep(r)]
    out = photos / f"{out.parent.name}-{out.name}"
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def old_tag_f1(targets: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Per-tag F1 at top-k of the old tags alone (new columns cannot take their slots)."""
    return per_tag_at_k(targets, scores, k)["f1"]


@pytest.mark.parametrize("method", ["drel", "knn"])
def test_update_command_adds_images_and_a_new_tag(method, synthetic_photos, feature_cache, tmp_path):
    # Initial data: no blue photo at all; the update brings the blue training photos (a brand-new tag).
    first = write_csv(synthetic_photos, tmp_path / "first.csv", lambda r: not r["tags"].startswith("blue"))
    new = write_csv(
        synthetic_photos, tmp_path / "new.csv", lambda r: r["tags"].startswith("blue") and r["split"] != "test"
    )
    for name, src in (("first", first), ("new", new)):
        assert main(["-q", "import", "csv", str(src), str(tmp_path / name)]) == 0
    settings = [f"--set={s}" for s in DREL_SYNTHETIC] if method == "drel" else ["--set=k=5"]
    model_dir, updated_dir = tmp_path / "model", tmp_path / "updated"
    args = ["-q", "train", str(tmp_path / "first"), "--method", method, "--out", str(model_dir)]
    assert main([*args, "--cache-dir", str(feature_cache), *settings]) == 0
    before = TagModel.load(model_dir)
    assert "blue" not in before.vocab

    args = ["-q", "update", str(model_dir), str(tmp_path / "new"), "--out", str(updated_dir)]
    assert main([*args, "--cache-dir", str(feature_cache), "--splits", "train", "val"]) == 0
    after = TagModel.load(updated_dir)
    assert after.tags[: len(before.tags)] == before.tags and "blue" in after.tags
    assert after.info["updates"][-1]["new_tags"] == ["blue"]
    assert TagModel.load(model_dir).tags == before.tags, "--out must leave the original model untouched"

    with open(synthetic_photos / "photos.csv", newline="") as handle:
        test_rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    paths = [str(synthetic_photos / r["file"]) for r in test_rows]
    truth_after = after.vocab.transform([r["tags"].split() for r in test_rows])
    scored_before = before.score_images(paths, cache_dir=feature_cache)
    scored_after = after.score_images(paths, cache_dir=feature_cache)
    blue = after.vocab.index_["blue"]
    is_blue = truth_after[:, blue] > 0
    top2 = np.argsort(-scored_after.scores, axis=1)[:, :2]
    hits = np.array([blue in row for row in top2])
    assert hits[is_blue].mean() >= 0.75, "the added tag is not predicted for its images"
    assert hits[~is_blue].mean() <= 0.25, "the added tag is predicted for images without it"
    n_old = len(before.tags)
    f1_before = old_tag_f1(truth_after[:, :n_old], scored_before.scores, k=2)
    f1_after = old_tag_f1(truth_after[:, :n_old], scored_after.scores[:, :n_old], k=2)
    assert f1_after > f1_before - 0.02, f"old tags lost quality: F1 {f1_before:.3f} -> {f1_after:.3f}"


def test_update_in_place_by_default(synthetic_dataset, feature_cache, tmp_path):
    model_dir = tmp_path / "model"
    train = ["-q", "train", str(synthetic_dataset), "--method", "knn", "--out", str(model_dir)]
    assert main([*train, "--cache-dir", str(feature_cache)]) == 0
    n_before = TagModel.load(model_dir).method.train_features_.shape[0]
    assert main(["-q", "update", str(model_dir), str(synthetic_dataset), "--cache-dir", str(feature_cache)]) == 0
    updated = TagModel.load(model_dir)
    assert updated.method.train_features_.shape[0] == n_before + 60  # the 48 train + 12 val photos again
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "left a temporary folder behind"


def test_update_refuses_methods_without_online_learning(synthetic_dataset, feature_cache, tmp_path, capsys):
    model_dir = tmp_path / "mlp"
    train = ["-q", "train", str(synthetic_dataset), "--method", "mlp", "--set", "max_epochs=2", "--out", str(model_dir)]
    assert main([*train, "--cache-dir", str(feature_cache)]) == 0
    assert main(["-q", "update", str(model_dir), str(synthetic_dataset), "--cache-dir", str(feature_cache)]) == 2
    err = capsys.readouterr().err
    assert "does not support online updates" in err and "drel" in err and "knn" in err


def test_update_model_rejects_unreadable_images_and_mismatched_lists(backbone, feature_cache, tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 1280)).astype(np.float32)
    method = create_method("knn", k=2).fit({"features": x}, np.eye(6, 2), progress=False)
    model = TagModel(method, TagVocabulary(tags=["a", "b"]), backbone_spec=backbone.spec)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="None of the 1 new images could be read"):
        update_model(model, [str(tmp_path / "broken.jpg")], [["a", "c"]], cache_dir=feature_cache, progress=False)
    assert model.tags == ["a", "b"], "a failed update must not change the model"
    with pytest.raises(ValueError, match="one list per image"):
        update_model(model, ["x.jpg"], [], progress=False)


@pytest.mark.slow
def test_update_on_corel5k_learns_held_out_words(corel5k_features):
    """Train drel on 3,000 photos without 10 words, update with the other 1,000 photos carrying all words."""
    _, x, y, train_idx, test_idx = corel5k_features
    rng = np.random.default_rng(0)
    order = rng.permutation(train_idx)
    first, new, val = order[:3000], order[3000:3600], order[3600:]
    counts = y[train_idx].sum(axis=0)
    # 10 words of middling frequency become the "new" tags: moved to the last columns.
    held = np.flatnonzero((counts >= 40) & (counts <= 150))[:10]
    kept = np.setdiff1d(np.arange(y.shape[1]), held)
    y = np.concatenate([y[:, kept], y[:, held]], axis=1)
    n_old = len(kept)
    drel = create_method("drel", max_epochs=30, patience=5, backbones=[]).fit(
        {"features": x[first]},
        y[first, :n_old],
        val_inputs={"features": x[val]},
        val_targets=y[val, :n_old],
        progress=False,
    )
    before = drel.score({"features": x[test_idx]})
    drel.update({"features": x[new]}, y[new], progress=False)
    after = drel.score({"features": x[test_idx]})
    truth = y[test_idx]
    f1_before = per_tag_at_k(truth[:, :n_old], before, 5)["f1"]
    f1_after = per_tag_at_k(truth[:, :n_old], after[:, :n_old], 5)["f1"]
    assert f1_after > f1_before - 0.02, f"old words lost quality: F1@5 {f1_before:.3f} -> {f1_after:.3f}"
    new_map = mean_average_precision(truth[:, n_old:], after[:, n_old:])
    prior = truth[:, n_old:].mean()
    assert new_map > 3 * prior, f"added words not learned: mAP {new_map:.3f} vs base rate {prior:.3f}"
    recalls = per_tag_at_k(truth, after, 5)["recall"][n_old:]
    assert np.nansum(recalls > 0) >= 5, "fewer than half of the added words are ever predicted in a top 5"

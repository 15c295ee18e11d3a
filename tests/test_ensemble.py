"""The ensemble of taggers (``ensemble``), its combiners and out-of-fold stacker, and per-tag thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from phototag.calibration import global_threshold, per_tag_thresholds
from phototag.cli import main
from phototag.data import Dataset
from phototag.methods import create_method
from phototag.methods.ensemble import COMBINERS, combine, parse_member
from phototag.metrics import mean_average_precision, per_image_prf, threshold_mask
from phototag.model import TagModel
from phototag.pipeline import train


def test_combiners_by_hand():
    scores = np.array([[[0.9, 0.2, 0.6]], [[0.6, 0.7, 0.55]], [[0.1, 0.4, 0.2]]], dtype=np.float32)
    np.testing.assert_allclose(combine(scores, "average"), [[1.6 / 3, 1.3 / 3, 1.35 / 3]], rtol=1e-6)
    np.testing.assert_allclose(combine(scores, "union"), [[0.9, 0.7, 0.6]])
    np.testing.assert_allclose(combine(scores, "intersection"), [[0.1, 0.2, 0.2]])
    votes = combine(scores, "vote")
    np.testing.assert_allclose(np.round(votes, 2), [[2 / 3, 1 / 3, 2 / 3]], atol=1e-2)
    assert votes[0, 0] > votes[0, 2]  # equal votes: the higher average wins the tie
    with pytest.raises(ValueError, match="Unknown combiner 'max'"):
        combine(scores, "max")


def test_member_weights_in_average_and_vote():
    scores = np.array([[[0.9, 0.2]], [[0.6, 0.7]], [[0.1, 0.4]]], dtype=np.float32)
    # weights 2:1:1 -> (2*0.9 + 0.6 + 0.1) / 4 and (2*0.2 + 0.7 + 0.4) / 4
    np.testing.assert_allclose(combine(scores, "average", weights=[2, 1, 1]), [[0.625, 0.375]], rtol=1e-6)
    # votes at 0.5: tag 0 gets members 1 and 2 (weight 3 of 4), tag 1 only member 2 (weight 1 of 4)
    votes = combine(scores, "vote", weights=[2, 1, 1])
    np.testing.assert_allclose(votes, [[0.75 + 1e-3 * 0.625, 0.25 + 1e-3 * 0.375]], rtol=1e-5)
    np.testing.assert_allclose(combine(scores, "average", weights=[1, 1, 1]), combine(scores, "average"), rtol=1e-6)
    # union and intersection ignore weights
    np.testing.assert_allclose(combine(scores, "union", weights=[0, 0, 1]), [[0.9, 0.7]])


@pytest.mark.parametrize("weights", [[1, 1], [1, -1, 1], [0, 0, 0]])
def test_bad_member_weights_are_refused(weights):
    method = create_method(
        "ensemble", {"members": ["mlp@efficientnet_lite0"] * 3, "weights": weights, "combiner": "average"}
    )
    x = {"backbone_features": {"efficientnet_lite0": np.zeros((4, 3), np.float32)}}
    with pytest.raises(ValueError, match="weights must give each of the 3 members"):
        method.fit(x, np.eye(4, 2), progress=False)


def test_member_strings_are_checked():
    assert parse_member("mlp@efficientnet_lite1") == ("mlp", "efficientnet_lite1")
    with pytest.raises(ValueError, match="method@backbone"):
        parse_member("mlp")
    with pytest.raises(ValueError, match="Unknown method"):
        parse_member("nope@efficientnet_lite0")


def test_per_tag_thresholds_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 6)) < 0.3).astype(int)
    y[:, 5] = 0  # no positives: keeps the default
    scores = np.clip(y * 0.3 + rng.random((40, 6)) * 0.8, 0, 1).astype(np.float32)
    thresholds = per_tag_thresholds(y, scores)
    assert thresholds[5] == pytest.approx(0.3)
    for j in range(5):

        def f1(t, j=j):
            pred = scores[:, j] >= t
            return 2 * (pred & (y[:, j] > 0)).sum() / (pred.sum() + y[:, j].sum())

        best = max(f1(t) for t in scores[:, j])
        assert f1(thresholds[j]) == pytest.approx(best)


def test_global_threshold_matches_a_brute_force_search():
    rng = np.random.default_rng(1)
    y = (rng.random((60, 8)) < 0.25).astype(int)
    scores = np.clip(y * 0.1 + rng.random((60, 8)) * 0.2, 0, 1)  # scores well below the seeds' 0.3

    def mean_f1(t):
        return per_image_prf(y, threshold_mask(scores, t, 3))["f1"].mean()

    grid = np.round(np.arange(1, 51) / 100, 2)
    chosen = global_threshold(y, scores, max_tags=3)
    assert mean_f1(chosen) == pytest.approx(max(mean_f1(t) for t in grid))
    assert chosen < 0.3 and mean_f1(chosen) > mean_f1(0.3)
    assert global_threshold(y, scores, max_tags=3, candidates=[0.3]) == 0.3
    with pytest.raises(ValueError, match="same 2-d shape"):
        global_threshold(y, scores[:, :3])


@pytest.fixture(scope="module")
def ensemble_model(synthetic_dataset, feature_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble") / "model"
    config = {
        "members": ["mlp@efficientnet_lite0", "knn@efficientnet_lite0"],
        "member_config": {"mlp": {"max_epochs": 60, "patience": 10}, "knn": {"k": 5}},
        "stack_folds": 3,
    }
    model = train(synthetic_dataset, method="ensemble", config=config, out=out, progress=False, cache_dir=feature_cache)
    return model, out


def photo_inputs(model, paths, cache):
    """The inputs the model's method declares, built by the input layer from photo files."""
    from phototag.inputs import build_inputs
    from phototag.runtime import RunOptions

    batch = build_inputs(model.method, paths, options=RunOptions(cache_dir=cache))
    assert batch.ok.all()
    return batch.inputs


def test_ensemble_learns_and_offers_every_combiner(ensemble_model, synthetic_dataset, feature_cache):
    model, out = ensemble_model
    ds = Dataset.load(synthetic_dataset)
    test = ds.split("test")
    inputs = photo_inputs(model, [str(ds.image_path(r)) for r in test], feature_cache)
    assert set(inputs) == {"backbone_features"} and set(inputs["backbone_features"]) == {"efficientnet_lite0"}
    truth = model.vocab.transform([r.tags for r in test])
    every = model.method.score_all(inputs)
    assert set(every) == set(COMBINERS)
    for name in ("average", "stacker"):
        assert mean_average_precision(truth, every[name]) > 0.9, name
    reloaded = TagModel.load(out)
    assert reloaded.method.config.combiner == "stacker"
    np.testing.assert_array_equal(reloaded.score_inputs(inputs), every["stacker"])
    reloaded.method.set_combiner("vote")
    np.testing.assert_array_equal(reloaded.score_inputs(inputs), every["vote"])


def test_stacker_learns_from_out_of_fold_scores_only(ensemble_model, synthetic_dataset, backbone, feature_cache):
    from phototag.features import FeatureStore

    model, _ = ensemble_model
    ds = Dataset.load(synthetic_dataset)
    train_records, _ = ds.train_val(val_fraction=0.1, seed=0)
    features = FeatureStore(backbone, feature_cache).extract([str(ds.image_path(r)) for r in train_records]).features
    targets = model.vocab.transform([r.tags for r in train_records])
    folds = model.method.folds_
    assert sorted(np.unique(folds)) == [0, 1, 2]
    for fold in range(3):
        held = folds == fold
        knn = create_method("knn", k=5).fit({"features": features[~held]}, targets[~held], progress=False)
        np.testing.assert_allclose(model.method.oof_scores_[1, held], knn.score({"features": features[held]}))


def test_features_follow_the_predict_cache_and_the_service_keeps_none(ensemble_model, synthetic_dataset, tmp_path):
    from PIL import Image

    from phototag.serve.batching import make_scorer
    from phototag.serve.uploads import DecodedImage

    model = TagModel.load(ensemble_model[1])
    ds = Dataset.load(synthetic_dataset)
    paths = [ds.image_path(r) for r in ds.split("test")[:3]]
    scored = model.score_images(paths, cache_dir=tmp_path / "cache")
    database = tmp_path / "cache" / "features" / "efficientnet_lite0-82bae17bfc32" / "features.sqlite"
    assert database.is_file()  # predict's --cache-dir is honoured
    size = database.stat().st_size
    items = [DecodedImage(p.name, p.read_bytes(), Image.open(p).convert("RGB")) for p in paths[::-1]]
    np.testing.assert_allclose(make_scorer(model)(items), scored.scores[::-1], rtol=1e-5, atol=1e-6)
    stores = [s for key, group in model._stores.items() if not key[-1] for s in group.values()]
    assert stores and all(store.dir is None and store.cache.memory is None for store in stores)  # keeps nothing
    assert database.stat().st_size == size


def test_cli_predict_with_a_combiner(ensemble_model, synthetic_dataset, capsys):
    _, out = ensemble_model
    ds = Dataset.load(synthetic_dataset)
    photo = str(ds.image_path(ds.split("test")[0]))
    assert main(["--quiet", "predict", str(out), photo, "--combiner", "union", "--top-k", "2"]) == 0
    assert photo in capsys.readouterr().out
    assert main(["--quiet", "predict", str(out), photo, "--combiner", "max"]) == 2
    assert "Unknown combiner 'max'" in capsys.readouterr().err


def test_train_calibrates_per_tag_thresholds(synthetic_dataset, feature_cache, tmp_path):
    model = train(
        synthetic_dataset,
        method="mlp",
        config={"max_epochs": 30},
        cache_dir=feature_cache,
        out=tmp_path / "m",
        progress=False,
        calibrate_thresholds=True,
    )
    thresholds = model.decision.per_tag_threshold
    assert thresholds is not None and thresholds.shape == (len(model.vocab),)
    np.testing.assert_array_equal(TagModel.load(tmp_path / "m").decision.per_tag_threshold, thresholds)
    ds = Dataset.load(synthetic_dataset)
    _, val_records = ds.train_val(val_fraction=0.1, seed=0)
    scored = model.score_images([ds.image_path(r) for r in val_records], cache_dir=feature_cache)
    truth = model.vocab.transform([r.tags for r in val_records])
    np.testing.assert_array_equal(per_tag_thresholds(truth, scored.scores), thresholds)
    # Each tag's own F1 on validation is at least what the global 0.3 gives.
    for j in range(len(thresholds)):
        own = per_image_prf(truth[:, [j]].T, (scored.scores[:, j] >= thresholds[j])[None])["f1"][0]
        fixed = per_image_prf(truth[:, [j]].T, threshold_mask(scored.scores[:, [j]].T, 0.3, None))["f1"][0]
        assert own >= fixed - 1e-9


def test_balance_offsets_match_top_k_counts_to_tag_frequencies():
    from phototag.calibration import apply_offsets, tag_balance_offsets
    from phototag.metrics import top_k_mask

    rng = np.random.default_rng(0)
    n, t = 600, 12
    freq = np.linspace(0.02, 0.6, t)
    y = (rng.random((n, t)) < freq).astype(int)
    # A scorer that favours frequent tags everywhere (score grows with frequency), plus a weak signal.
    scores = np.clip(0.5 * freq + 0.2 * y + 0.1 * rng.random((n, t)), 0, 1)
    before = top_k_mask(scores, 3).sum(axis=0)
    offsets = tag_balance_offsets(y, scores, k=3, power=1.0)
    after = top_k_mask(apply_offsets(scores, offsets), 3).sum(axis=0)
    target = y.sum(axis=0) / y.sum() * 3 * n
    assert np.abs(after - target).max() <= 0.05 * target.max()
    assert before[0] < 0.5 * target[0] < after[0]  # the rarest tag now gets its share of top-3 slots
    with pytest.raises(ValueError, match="power must be >= 0"):
        tag_balance_offsets(y, scores, power=-1)
    # strength scales the fitted offsets.
    np.testing.assert_allclose(tag_balance_offsets(y, scores, k=3, strength=1.5), 1.5 * offsets, rtol=1e-6)
    with pytest.raises(ValueError, match="strength must be >= 0"):
        tag_balance_offsets(y, scores, strength=-0.5)


def test_balanced_ranking_keeps_each_images_best_tag():
    from phototag.calibration import apply_offsets, balanced_ranking
    from phototag.metrics import top_k_mask

    scores = np.array([[0.9, 0.5, 0.2, 0.1], [0.3, 0.6, 0.05, 0.4]])
    offsets = np.array([-9.0, 0.0, 4.0, 3.0])  # holds tag 0 back, favours tags 2 and 3
    # Ranked by offset alone, tag 0 (0.9) would leave row 0's top 2; kept as the best tag, only its partner changes.
    assert top_k_mask(apply_offsets(scores, offsets), 2).astype(int).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]
    assert top_k_mask(balanced_ranking(scores, offsets), 2).astype(int).tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]
    # The best tag is taken among the tags not excluded (a category never counts as the photo's best keyword).
    excluded = np.array([True, False, False, False])
    ranking = balanced_ranking(scores, offsets, exclude=excluded)
    assert np.argmax(ranking[0]) == 1 and np.argmax(ranking[1]) == 1
    np.testing.assert_array_equal(balanced_ranking(scores[:0], offsets), np.zeros((0, 4)))


def test_balanced_places_limit_the_offsets_to_the_first_places(tmp_path):
    """``balanced_places``: the offsets choose the first places of a top k, in their order; the rest go by score. A
    top k of at most that many places is the balanced one; the model keeps the setting when saved."""
    from phototag.calibration import balanced_ranking
    from phototag.metrics import top_k_mask
    from phototag.model import DecisionRule
    from phototag.vocab import TagVocabulary

    rng = np.random.default_rng(0)
    scores = rng.random((50, 12))
    offsets = rng.normal(0, 3, 12)
    full, limited = balanced_ranking(scores, offsets), balanced_ranking(scores, offsets, places=3)
    for k in (1, 2, 3):
        np.testing.assert_array_equal(top_k_mask(limited, k), top_k_mask(full, k))
    balanced3 = top_k_mask(full, 3)
    for row in range(50):
        rest = np.where(balanced3[row], -np.inf, scores[row])
        expected = balanced3[row] | top_k_mask(rest[None], 3)[0]  # the balanced 3, then the 3 best others by score
        np.testing.assert_array_equal(top_k_mask(limited, 6)[row], expected)

    rule = DecisionRule(balanced=True, balanced_places=3)
    chosen = rule.select(scores, top_k=6, rank_offset=offsets)
    assert [sorted(i for i, _ in row) for row in chosen] == [sorted(np.flatnonzero(m)) for m in top_k_mask(limited, 6)]
    method = create_method("knn", k=3).fit({"features": rng.normal(size=(20, 4)).astype(np.float32)}, np.eye(20, 3))
    model = TagModel(method, TagVocabulary(tags=["a", "b", "c"]), decision=rule)
    model.save(tmp_path / "m")
    assert TagModel.load(tmp_path / "m").decision.balanced_places == 3


#: A one-member ensemble with balancing offsets (kNN on Lite0, out-of-fold scores of 3 folds).
BALANCED_KNN_ENSEMBLE = {
    "members": ["knn@efficientnet_lite0"],
    "member_config": {"knn": {"k": 5}},
    "stack_folds": 3,
    "balance": 1.0,
    "balance_k": 2,
    "combiner": "average",
}


def test_ensemble_balance_offsets_are_fitted_out_of_fold_and_saved(synthetic_dataset, feature_cache, tmp_path):
    from phototag.calibration import balanced_ranking, tag_balance_offsets

    config = dict(BALANCED_KNN_ENSEMBLE)
    model = train(
        synthetic_dataset, method="ensemble", config=config, out=tmp_path / "m", progress=False, cache_dir=feature_cache
    )
    method = model.method
    assert set(method.offsets_) == set(COMBINERS) - {"stacker"}
    train_records, _ = Dataset.load(synthetic_dataset).train_val(val_fraction=0.1, seed=0)
    y = model.vocab.transform([r.tags for r in train_records])
    np.testing.assert_allclose(method.offsets_["average"], tag_balance_offsets(y, method.oof_scores_[0], k=2))
    ds = Dataset.load(synthetic_dataset)
    inputs = photo_inputs(model, [str(ds.image_path(r)) for r in ds.split("test")], feature_cache)
    raw = method.member_scores(inputs)[0]
    reloaded = TagModel.load(tmp_path / "m")
    # The offsets only choose: scores stay the combiner's own; a balanced top k keeps each photo's best-scoring tag
    # and fills the rest by logit(score) + offset, listed by score.
    scores = reloaded.score_inputs(inputs)
    np.testing.assert_allclose(scores, raw, rtol=1e-6)
    np.testing.assert_allclose(reloaded.method.rank_offset(), method.offsets_["average"])
    balanced = balanced_ranking(raw, method.offsets_["average"])
    np.testing.assert_allclose(reloaded.ranking_scores(scores, balanced=True), balanced, rtol=1e-6)
    np.testing.assert_allclose(reloaded.ranking_scores(scores), scores)  # balanced top-k is opt-in
    names = [f"img{i}" for i in range(len(raw))]
    top3 = reloaded.format_predictions(names, scores, top_k=3, balanced=True)
    moved = 0
    for row, ranked, predicted in zip(scores, balanced, top3, strict=True):
        chosen = np.argsort(-ranked, kind="stable")[:3]
        expected = chosen[np.argsort(-row[chosen], kind="stable")]
        assert [t["tag"] for t in predicted["tags"]] == [reloaded.tags[j] for j in expected]
        assert predicted["tags"][0]["tag"] == reloaded.tags[int(np.argmax(row))]
        moved += set(chosen) != set(np.argsort(-row, kind="stable")[:3])
    assert moved > 0, "the offsets changed no photo's top 3"
    plain = reloaded.format_predictions(names, scores, top_k=2)
    for row, predicted in zip(scores, plain, strict=True):
        assert [t["tag"] for t in predicted["tags"]] == [reloaded.tags[j] for j in np.argsort(-row, kind="stable")[:2]]
    # The threshold rule ignores the offsets, balanced or not.
    assert reloaded.format_predictions(names, scores, balanced=True) == model.format_predictions(names, raw)
    reloaded.decision.balanced = True  # a model can make balanced top-k its default
    assert reloaded.format_predictions(names, scores, top_k=3) == top3
    reloaded.method.set_combiner("stacker")
    assert reloaded.method.rank_offset() is None
    with pytest.raises(ValueError, match="no balancing offsets"):
        reloaded.format_predictions(names, scores, top_k=2, balanced=True)
    assert {"average", "average + balance"} <= set(method.validation_)
    with pytest.raises(ValueError, match="balance needs out-of-fold scores"):
        create_method("ensemble", {"balance": 1.0, "stack_folds": 0})._check_config()


def test_ensemble_balanced_setting_makes_balanced_top_k_the_models_default(synthetic_dataset, feature_cache):
    config = dict(BALANCED_KNN_ENSEMBLE)
    plain = train(synthetic_dataset, method="ensemble", config=config, progress=False, cache_dir=feature_cache)
    assert not plain.decision.balanced and plain.method.rank_offset() is not None  # --balanced asks for it
    model = train(
        synthetic_dataset,
        method="ensemble",
        config={**config, "balanced": True},
        progress=False,
        cache_dir=feature_cache,
    )
    assert model.decision.balanced
    scores = np.random.default_rng(0).random((4, len(model.tags))).astype(np.float32)
    np.testing.assert_array_equal(model.ranking_scores(scores), model.ranking_scores(scores, balanced=True))
    with pytest.raises(ValueError, match="balanced=true needs balancing offsets: set balance > 0"):
        create_method("ensemble", {"balanced": True})._check_config()


def test_an_ensemble_trained_without_its_stacker(synthetic_dataset, feature_cache, tmp_path):
    """``stacker=false`` (the default model's recipe): no stacker is trained or saved; the fixed combiners work and
    give the same scores as with it; asking for the stacker is a clear error, at training and at predict time."""
    config = dict(BALANCED_KNN_ENSEMBLE)
    with_it = train(synthetic_dataset, method="ensemble", config=config, progress=False, cache_dir=feature_cache)
    model = train(
        synthetic_dataset,
        method="ensemble",
        config={**config, "stacker": False},
        out=tmp_path / "m",
        progress=False,
        cache_dir=feature_cache,
    )
    assert model.method.combiners() == COMBINERS[:-1] and with_it.method.combiners() == COMBINERS
    arrays, _ = model.method.get_state()
    assert not [name for name in arrays if name.startswith("stacker/")]
    reloaded = TagModel.load(tmp_path / "m")
    ds = Dataset.load(synthetic_dataset)
    inputs = photo_inputs(model, [str(ds.image_path(r)) for r in ds.split("test")], feature_cache)
    for name in COMBINERS[:-1]:
        reloaded.method.set_combiner(name)
        with_it.method.set_combiner(name)
        np.testing.assert_allclose(reloaded.score_inputs(inputs), with_it.score_inputs(inputs), rtol=1e-6)
    assert set(reloaded.method.score_all(inputs)) == set(COMBINERS[:-1])
    with pytest.raises(ValueError, match="trained without its stacker"):
        reloaded.method.set_combiner("stacker")
    with pytest.raises(ValueError, match="combiner 'stacker' needs the stacker"):
        create_method("ensemble", {"stacker": False, "combiner": "stacker"})._check_config()

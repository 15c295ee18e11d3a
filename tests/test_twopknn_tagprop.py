"""``2pknn`` and ``tagprop``: balanced neighbourhoods, learned weights, online updates, exact search, real data;
and the ``backbones`` setting they share with ``drel``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import optimize, sparse

from conftest import clustered_features
from phototag.methods import create_method
from phototag.methods._neighbour_vote import Neighbourhoods, VoteLikelihood, knn_neighbourhoods
from phototag.metrics import evaluate_scores
from phototag.model import TagModel
from phototag.neighbors import ExactIndex, FeatureScaler
from phototag.vocab import TagVocabulary

#: A small drel that fits these 120-image tasks in seconds.
SMALL_DREL = {"max_epochs": 5, "latent_dim": 16, "image_hidden": 32, "tag_hidden": 16, "tag_dim": 8}


def unit(angle: float) -> list[float]:
    return [np.cos(angle), np.sin(angle)]


@pytest.fixture(scope="module")
def rare_word_set():
    """Query at angle 0. Ten photos tagged {a, c} at angle 0.5, two tagged {a, r} at -0.45 (slightly nearer),
    four tagged {b} far away. Columns: a, b, c, r."""
    angles = [0.5 + 0.01 * i for i in range(10)] + [-0.45, -0.46] + [2.5, 2.6, 2.7, 2.8]
    features = np.array([unit(a) for a in angles], np.float32)
    targets = np.zeros((16, 4), np.float32)
    targets[:10, [0, 2]] = 1
    targets[10:12, [0, 3]] = 1
    targets[12:, 1] = 1
    return features, targets, np.array([unit(0.0)], np.float32)


def test_2pknn_scores_follow_the_two_passes(rare_word_set):
    features, targets, query = rare_word_set
    method = create_method("2pknn", k1=2, weight=20.0, standardize=False, backbones=[]).fit(
        {"features": features}, targets
    )
    scores = method.score({"features": query})[0]
    # Pass 1: a -> rows 11, 10 (nearest carrying a); b -> rows 12, 13; c -> rows 0, 1; r -> rows 10, 11.
    union = [0, 1, 10, 11, 12, 13]
    # The memory keeps unit vectors in float16 (half the model size).
    half = features.astype(np.float16).astype(np.float32)
    d = 1.0 - half[union] @ query[0].astype(np.float16).astype(np.float32)
    w = np.exp(-20.0 * (d - d.min()))
    expected = (w @ targets[union]) / w.sum()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-7)


def test_2pknn_lifts_the_rare_word_over_a_frequent_one(rare_word_set):
    features, targets, query = rare_word_set
    method = create_method("2pknn", k1=2, weight=20.0, standardize=False, backbones=[]).fit(
        {"features": features}, targets
    )
    scores = method.score({"features": query})[0]
    assert scores[3] > scores[2], "the rare word r (2 photos, nearer) must outrank the frequent c (10 photos)"
    # Plain distance-weighted voting over the 12 nearest photos ranks them the other way round.
    d = 1.0 - features[:12] @ query[0]
    plain = np.exp(-20.0 * d) @ targets[:12]
    assert plain[2] > plain[3]


def test_tagprop_learning_increases_the_training_likelihood():
    x, y = clustered_features(n=150, n_tags=5, dim=12, seed=3)
    learned = {}
    for weighting in ("distance", "rank"):
        method = create_method("tagprop", k=20, weighting=weighting, sigmoid=False, init_weight=1.0, backbones=[])
        method.fit({"features": x}, y, progress=False)
        memory = method.memory_
        bank = memory.vectors()
        rows = np.arange(len(x))
        nb = knn_neighbourhoods(memory.index(), bank, bank, 20, memory.scaler.blocks, exclude=rows)
        likelihood = VoteLikelihood(nb, memory.labels, y, mode=weighting)
        start = np.array([1.0]) if weighting == "distance" else np.zeros(20)
        before = -likelihood.loss(start)[0]
        after = -likelihood.loss(method.weights_)[0]
        assert after == pytest.approx(method.train_log_likelihood_)
        assert after > before + 0.1, weighting
        learned[weighting] = after
    # σML: the per-word sigmoids raise it further.
    sigml = create_method("tagprop", k=20, backbones=[]).fit({"features": x}, y, progress=False)
    assert sigml.train_log_likelihood_ > learned["distance"]


@pytest.mark.parametrize("mode", ["distance", "rank"])
def test_likelihood_gradients_match_finite_differences(mode):
    rng = np.random.default_rng(0)
    n_q, k, n_bank, n_tags = 6, 4, 10, 3
    nb = Neighbourhoods(
        n_q,
        np.repeat(np.arange(n_q), k),
        rng.integers(0, n_bank, n_q * k),
        rng.random((n_q * k, 2)).astype(np.float32),
        np.tile(np.arange(k, dtype=np.int32), n_q),
    )
    labels = sparse.csr_matrix((rng.random((n_bank, n_tags)) < 0.4).astype(np.float32))
    likelihood = VoteLikelihood(nb, labels, (rng.random((n_q, n_tags)) < 0.4).astype(np.float32), mode=mode)
    w = rng.random(2 if mode == "distance" else k) + 0.5
    alpha, beta = rng.random(n_tags) + 0.5, rng.normal(size=n_tags)
    n_w = len(w)

    def f(v):
        return likelihood.loss(v[:n_w], v[n_w : n_w + n_tags], v[n_w + n_tags :])[0]

    def g(v):
        _, gw, ga, gb = likelihood.loss(v[:n_w], v[n_w : n_w + n_tags], v[n_w + n_tags :])
        return np.concatenate([gw, ga, gb])

    v = np.concatenate([w, alpha, beta])
    assert optimize.check_grad(f, g, v, epsilon=1e-6) < 1e-5 * max(1.0, np.abs(g(v)).max())
    plain = likelihood.loss(w)
    numeric = optimize.approx_fprime(w, lambda u: likelihood.loss(u)[0], 1e-7)
    np.testing.assert_allclose(plain[1], numeric, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["2pknn", "tagprop"])
def test_update_adds_images_and_a_new_tag(name, tmp_path):
    x, y = clustered_features(n=120, n_tags=3, dim=8, seed=1)
    method = create_method(name, {"k": 20, "backbones": []} if name == "tagprop" else {"backbones": []})
    method.fit({"features": x}, y, progress=False)
    rng = np.random.default_rng(2)
    far = np.full(8, 6.0, np.float32)
    new_x = (far + rng.normal(scale=0.3, size=(6, 8))).astype(np.float32)
    new_y = np.zeros((6, 4), np.float32)
    new_y[:, 3] = 1
    before = method.score({"features": x[:5]})
    method.update({"features": new_x}, new_y, progress=False)
    query = (far + rng.normal(scale=0.3, size=(3, 8))).astype(np.float32)
    scores = method.score({"features": query})
    assert scores.shape == (3, 4)
    assert (scores.argmax(axis=1) == 3).all(), "photos like the new ones should get the new tag first"
    after = method.score({"features": x[:5]})
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all()
    vocab = TagVocabulary().fit([["t0", "t1", "t2", "t3"]])
    TagModel(method, vocab).save(tmp_path / "model")
    reloaded = TagModel.load(tmp_path / "model")
    np.testing.assert_array_equal(reloaded.score_inputs({"features": query}), scores)


def test_feature_blocks_are_normalised_separately():
    rng = np.random.default_rng(0)
    features = np.hstack([rng.normal(size=(20, 3)), 100 * rng.normal(size=(20, 5))]).astype(np.float32)
    scaler = FeatureScaler.fit(features, [3, 5], standardize=False)
    out = scaler.transform(features)
    np.testing.assert_allclose(np.linalg.norm(out[:, :3], axis=1), np.sqrt(0.5), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="sum to the feature size 8"):
        FeatureScaler.fit(features, [3, 4])


def test_exact_index_matches_brute_force():
    rng = np.random.default_rng(0)
    bank = FeatureScaler.fit(rng.normal(size=(200, 16))).transform(rng.normal(size=(200, 16)))
    queries = bank[:7] + 0.01
    index = ExactIndex(16)
    index.add(bank)
    sims, ids = index.search(queries, 5)
    expected = np.argsort(-(queries @ bank.T), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(queries @ bank.T, expected, axis=1), rtol=1e-5)


def test_bad_settings_are_refused():
    x, y = clustered_features(n=20, n_tags=2, dim=4)
    with pytest.raises(ValueError, match="'k1' parameter of 2pknn must be an int >= 1"):
        create_method("2pknn", k1=0, backbones=[]).fit({"features": x}, y)
    with pytest.raises(ValueError, match="balance and balance_strength must be >= 0"):
        create_method("2pknn", balance=-1.0, backbones=[]).fit({"features": x}, y)
    with pytest.raises(ValueError, match="blocks .* or backbones, not both"):
        create_method("2pknn", blocks=[2, 2]).fit(
            {"backbone_features": {"efficientnet_lite1": x, "efficientnet_lite2": x}}, y
        )
    with pytest.raises(ValueError, match="tagprop weighting must be one of"):
        create_method("tagprop", weighting="softmax", backbones=[]).fit({"features": x}, y)


@pytest.mark.slow
def test_real_corel5k_subset(corel5k_features):
    """1,000 Corel5k training photos, the 500 held-out ones scored with the default settings: both rank each word's
    photos better than plain knn (mAP), and their top 5 are far above chance."""
    _, features, targets, train_rows, test_rows = corel5k_features
    train_rows = train_rows[:1000]
    x_train, y_train = features[train_rows], targets[train_rows]
    x_test, y_test = features[test_rows], targets[test_rows]
    results = {}
    # 2pknn's and tagprop's defaults vote on Lite1 + Lite2; on these Lite0 features, the settings chosen for Lite0
    # (knn_methods.md).
    lite0 = {"2pknn": {"backbones": [], "k1": 5, "weight": 20.0}, "tagprop": {"backbones": []}}
    for name in ("knn", "2pknn", "tagprop"):
        method = create_method(name, lite0.get(name, {})).fit({"features": x_train}, y_train, progress=False)
        results[name] = evaluate_scores(y_test, method.score({"features": x_test}), k=5)
    for name in ("2pknn", "tagprop"):
        assert results[name]["map"] > results["knn"]["map"], (name, results[name]["map"], results["knn"]["map"])
        assert results[name]["tag@5_f1"] > 0.15, name
        assert results[name]["tag@5_n_plus"] > 70, name


@pytest.mark.parametrize("name", ["2pknn", "tagprop", "drel"])
def test_methods_join_the_named_backbones(name, tmp_path):
    """backbones: the named backbones' features side by side, one block each; the same scores as the joined array
    (with those blocks given by hand where the method has blocks). The model reads them as backbone_features, keeps
    them after loading, and says which are missing; a model saved before the setting reads its own backbone."""
    from phototag.methods.base import MissingInputError

    x, y = clustered_features(n=120, n_tags=4, dim=16, seed=3)
    other = np.random.default_rng(3).normal(size=(120, 6)).astype(np.float32)
    names = ["efficientnet_lite1", "efficientnet_lite2"]
    settings = {"2pknn": {"balance": 0.0}, "tagprop": {"k": 20}}.get(name, SMALL_DREL)
    method = create_method(name, backbones=names, **settings)
    assert method.data_keys == ("backbone_features",) and method.feature_backbones() == names
    inputs = {"backbone_features": {names[0]: x, names[1]: other}}
    method.fit(inputs, y, progress=False)
    joined = np.concatenate([x, other], axis=1)
    blocks = {} if name == "drel" else {"blocks": [16, 6]}
    by_hand = create_method(name, backbones=[], **blocks, **settings).fit({"features": joined}, y, progress=False)
    np.testing.assert_allclose(method.score(inputs), by_hand.score({"features": joined}), rtol=1e-6, atol=1e-7)
    vocab = TagVocabulary().fit([["t0", "t1", "t2", "t3"]])
    TagModel(method, vocab).save(tmp_path / "model")
    loaded = TagModel.load(tmp_path / "model").method
    assert loaded.data_keys == ("backbone_features",)
    np.testing.assert_array_equal(loaded.score(inputs), method.score(inputs))
    with pytest.raises(MissingInputError, match="efficientnet_lite2"):
        loaded.score({"backbone_features": {names[0]: x}})
    TagModel(by_hand, vocab).save(tmp_path / "older")
    header_file = tmp_path / "older" / "phototag_model.json"
    header = json.loads(header_file.read_text())
    del header["config"]["backbones"]
    header["config"].pop("balance", None)
    header_file.write_text(json.dumps(header))
    older = TagModel.load(tmp_path / "older").method
    assert older.data_keys == ("features",) and older.rank_offset() is None
    np.testing.assert_array_equal(older.score({"features": joined}), by_hand.score({"features": joined}))


def test_2pknn_balancing_offsets_give_rare_tags_their_share(tmp_path):
    """balance > 0: offsets fitted on leave-one-out training scores. Without them a frequent tag fills every top 1;
    with them the rare tag tops about as many photos as carry it, the scores themselves are unchanged, and the
    offsets survive saving and an update that adds a tag."""
    from phototag.calibration import apply_offsets, top_k_mask

    rng = np.random.default_rng(0)
    # 100 photos in one cloud: all carry 'common'; 20 (anywhere in the cloud) also carry 'rare', near each other.
    x = rng.normal(size=(100, 8)).astype(np.float32)
    x[:20] += 1.5
    y = np.zeros((100, 2), np.float32)
    y[:, 0] = 1
    y[:20, 1] = 1
    plain = create_method("2pknn", backbones=[], balance=0.0, k1=3, weight=5.0).fit({"features": x}, y)
    assert plain.rank_offset() is None
    balanced = create_method("2pknn", backbones=[], balance=1.0, balance_k=1, k1=3, weight=5.0)
    balanced.fit({"features": x}, y, progress=False)
    offsets = balanced.rank_offset()
    assert offsets.shape == (2,) and offsets[1] > offsets[0]
    queries = x + rng.normal(scale=0.1, size=x.shape).astype(np.float32)
    scores = balanced.score({"features": queries})
    np.testing.assert_array_equal(scores, plain.score({"features": queries}))
    assert top_k_mask(scores, 1)[:, 1].sum() < 5, "unbalanced, the frequent tag tops (almost) every photo"
    rare_first = top_k_mask(apply_offsets(scores, offsets), 1)[:, 1]
    assert 10 <= rare_first.sum() <= 30 and rare_first[:20].mean() > rare_first[20:].mean()
    vocab = TagVocabulary().fit([["common", "rare"]])
    TagModel(balanced, vocab).save(tmp_path / "model")
    loaded = TagModel.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.rank_offset(balanced=True), offsets)
    assert loaded.rank_offset() is None, "balanced decisions stay opt-in"
    loaded.method.update({"features": x[:3]}, np.ones((3, 3), np.float32), progress=False)
    assert loaded.method.rank_offset().shape == (3,)
    assert loaded.method.rank_offset()[2] == np.median(offsets)


def test_pooled_stages_are_blocks_of_their_own():
    """A "+sN" backbone's features are its last layer, then each pooled earlier stage: each is a block of its own
    (distances average over them); features of another width are refused by name."""
    from phototag.methods.base import pooled_parts

    assert pooled_parts("efficientnet_lite1+s16", 1392) == [1280, 112]
    assert pooled_parts("efficientnet_lite2+s8+s16", 1280 + 48 + 120) == [1280, 48, 120]
    assert pooled_parts("efficientnet_lite1", 1280) == [1280]
    names = ["efficientnet_lite1+s16", "efficientnet_lite2"]
    rng = np.random.default_rng(0)
    inputs = {"backbone_features": {names[0]: rng.normal(size=(40, 1392)), names[1]: rng.normal(size=(40, 1280))}}
    y = (rng.random((40, 3)) < 0.4).astype(np.float32)
    method = create_method("2pknn", backbones=names, balance=0.0).fit(inputs, y, progress=False)
    assert tuple(method.memory_.scaler.blocks) == (1280, 112, 1280)
    assert method.score(inputs).shape == (40, 3)
    wrong = {"backbone_features": {names[0]: rng.normal(size=(40, 1280)), names[1]: rng.normal(size=(40, 1280))}}
    with pytest.raises(ValueError, match=r"'efficientnet_lite1\+s16' have 1280 numbers per photo; it gives 1392"):
        create_method("2pknn", backbones=names).fit(wrong, y, progress=False)


@pytest.mark.parametrize("name", ["tagprop", "drel"])
def test_training_chooses_the_threshold_on_validation(name, synthetic_dataset, feature_cache):
    """tagprop's per-word sigmoids and drel's one Platt scale are not on the seeds' 0.3 scale: `train` sets the
    model's threshold to the one with the best mean per-image F1 on the validation photos."""
    from phototag.calibration import global_threshold
    from phototag.data import Dataset
    from phototag.pipeline import train

    config = {"backbones": [], **({"k": 10} if name == "tagprop" else SMALL_DREL)}
    model = train(synthetic_dataset, method=name, config=config, cache_dir=feature_cache, progress=False)
    ds = Dataset.load(synthetic_dataset)
    _, val_records = ds.train_val(val_fraction=0.1, seed=0)
    scored = model.score_images([ds.image_path(r) for r in val_records], cache_dir=feature_cache)
    truth = model.vocab.transform([r.tags for r in val_records])
    assert model.info["threshold_chosen_on"].startswith("validation")
    assert model.decision.threshold == global_threshold(truth, scored.scores)


def test_a_trained_2pknn_model_makes_balanced_top_k_decisions(synthetic_dataset, feature_cache, tmp_path, capsys):
    """`train` sets a 2pknn model's decision to balanced top k (its balancing was chosen where balanced beat plain);
    `--no-balanced` ranks by score again, and a model trained without offsets ranks by score."""
    from phototag.cli import main
    from phototag.model import TagModel
    from phototag.pipeline import train

    config = {"backbones": [], "k1": 2, "weight": 5.0, "balance": 1.0, "balance_k": 1}
    model = train(synthetic_dataset, method="2pknn", config=config, cache_dir=feature_cache, out=tmp_path / "m")
    assert model.decision.balanced and TagModel.load(tmp_path / "m").decision.balanced
    scores = np.random.default_rng(0).random((4, len(model.vocab))).astype(np.float32)
    assert np.array_equal(model.ranking_scores(scores), model.ranking_scores(scores, balanced=True))
    assert np.array_equal(model.ranking_scores(scores, balanced=False), scores)
    plain = train(synthetic_dataset, method="2pknn", config={**config, "balance": 0.0}, cache_dir=feature_cache)
    assert not plain.decision.balanced
    argv = ["-q", "evaluate", str(tmp_path / "m"), str(synthetic_dataset), "--cache-dir", str(feature_cache)]
    for extra, name in (([], "default"), (["--balanced"], "on"), (["--no-balanced"], "off")):
        assert main([*argv, *extra, "--json", str(tmp_path / f"{name}.json")]) == 0
    capsys.readouterr()
    read = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("default", "on", "off")}
    assert read["default"] == read["on"]
    assert read["off"]["map"] == read["on"]["map"]

"""Tag refinement (issue 6): the ``refine`` method's pieces, its baselines, ``refine_dataset``, ``phototag refine``."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from conftest import clustered_features
from phototag.cli import main
from phototag.data import Dataset
from phototag.methods import create_method
from phototag.methods.refine import google_distance, nearest_candidates, tag_laplacian, tag_similarity
from phototag.methods.refine_baselines import rpca_inexact_alm
from phototag.metrics import mean_average_precision, per_image_prf, threshold_mask
from phototag.refinement import refine_dataset, refine_scores, simulate_user_noise, tag_context_features

NAMES = ["a", "b", "c"]


def strings(matrix, names):
    return [[names[j] for j in np.flatnonzero(row)] for row in matrix]


# --- pieces of refine ---------------------------------------------------------------------------------------------
def test_google_distance_hand_computed():
    g = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 0, 0]])
    d = google_distance(g)
    # f = (3, 2, 1), N = 4: NGD(a, b) = (log 3 − log 2) / (log 4 − log 2); NGD(a, c) = log 3 / log 4.
    assert d[0, 1] == pytest.approx((np.log(3) - np.log(2)) / (np.log(4) - np.log(2)))
    assert d[0, 2] == pytest.approx(np.log(3) / np.log(4))
    assert np.isinf(d[1, 2]) and d[0, 0] == 0


def test_tag_laplacian_is_the_pairwise_smoothness():
    g = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1]])
    xi = tag_similarity(g, NAMES, alpha=0.0, knowledge="none")
    lap = tag_laplacian(g, NAMES, alpha=0.0, knowledge="none")
    p = np.array([0.9, 0.2, 0.4])
    pairwise = 0.5 * sum(xi[j, k] * (p[j] - p[k]) ** 2 for j in range(3) for k in range(3) if j != k)
    assert p @ lap @ p == pytest.approx(pairwise, rel=1e-5)
    assert xi[0, 1] > xi[0, 2] > 0  # a and b co-occur more than a and c


def test_nearest_candidates_match_sklearn():
    x = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)
    ours = nearest_candidates(x, 6, chunk_size=7)
    _, theirs = NearestNeighbors(n_neighbors=7).fit(x).kneighbors(x)
    np.testing.assert_array_equal(ours, theirs[:, 1:])


def test_simulated_noise_rates():
    truth = (np.random.default_rng(1).random((2000, 30)) < 0.1).astype(np.float32)
    noisy = simulate_user_noise(truth, drop_rate=0.3, add_rate=0.5, seed=0)
    assert (noisy * truth).sum() / truth.sum() == pytest.approx(0.7, abs=0.02)
    assert (noisy * (1 - truth)).sum() / truth.sum() == pytest.approx(0.5, abs=0.03)


def test_tag_context_features_are_unit_rows():
    g = (np.random.default_rng(0).random((40, 12)) < 0.3).astype(np.float32)
    g[:, 0] = 1
    g[0] = 0
    f = tag_context_features(g, dim=5)
    assert f.shape == (40, 5)
    np.testing.assert_allclose(np.linalg.norm(f[1:], axis=1), 1.0, rtol=1e-5)
    assert not f[0].any()


# --- baselines ----------------------------------------------------------------------------------------------------
def test_user_tags_echoes_known_tags():
    method = create_method("user_tags").fit({"user_tags": [["a"]] * 2}, np.eye(2, 3), tag_names=NAMES)
    scores = method.score({"user_tags": [["c", "#A", "unknown"], []]})
    np.testing.assert_array_equal(scores, [[1, 0, 1], [0, 0, 0]])


def test_tag_cooccur_hand_computed():
    g = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=np.float32)
    method = create_method("tag_cooccur", smoothing=0.0).fit({"user_tags": strings(g, NAMES)}, g, tag_names=NAMES)
    scores = method.score({"user_tags": [["a"], ["a", "c"], []]})
    # P(b | a) = 2/3, P(c | a) = 0; P(a | c) = 0, P(b | c) = 1.
    np.testing.assert_allclose(scores[0], [1, 2 / 3, 0], rtol=1e-6)
    np.testing.assert_allclose(scores[1], [(1 + 0) / 2, (2 / 3 + 1) / 2, (0 + 1) / 2], rtol=1e-6)
    np.testing.assert_allclose(scores[2], [3 / 4, 3 / 4, 1 / 4])  # no user tags: the priors


def test_tag_vote_counts_neighbour_votes_minus_prior():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    g = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=np.float32)
    method = create_method("tag_vote", k=2).fit({"features": x, "user_tags": strings(g, NAMES)}, g, tag_names=NAMES)
    prior = g.mean(0)
    scores = method.score({"features": np.array([[1, 0.05]], dtype=np.float32), "user_tags": [["c"]]})
    np.testing.assert_allclose(scores[0], (g[0] + g[1] + [0, 0, 1]) / 3 - prior, rtol=1e-6)
    # Refining the fitted images: an image is never its own neighbour.
    np.testing.assert_allclose(method.refined_scores_[0], (g[1] + g[3] + g[0]) / 3 - prior, rtol=1e-6)


def test_rpca_separates_low_rank_and_sparse():
    rng = np.random.default_rng(0)
    low = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 60))  # tall: the Gram-matrix SVD path
    sparse = np.where(rng.random(low.shape) < 0.05, rng.choice([-8.0, 8.0], size=low.shape), 0.0)
    recovered, errors = rpca_inexact_alm(low + sparse)
    assert np.abs(recovered - low).max() < 1e-2
    assert np.abs(errors - sparse).max() < 1e-2


def correlated_tags(n=300, seed=0):
    """Tags in 3 groups that always occur together: a missing tag is predictable from its group."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 3, size=n)
    truth = np.zeros((n, 9), dtype=np.float32)
    for i, group in enumerate(groups):
        truth[i, 3 * group : 3 * group + 3] = 1
    return truth, simulate_user_noise(truth, drop_rate=0.3, add_rate=0.2, seed=seed)


@pytest.mark.parametrize("name", ["rpca", "tag_cooccur", "tag_vote", "refine"])
def test_baselines_and_refine_beat_user_tags_on_correlated_tags(name):
    truth, noisy = correlated_tags()
    names = [f"t{j}" for j in range(truth.shape[1])]
    x = truth @ np.random.default_rng(1).normal(size=(9, 8)) + np.random.default_rng(2).normal(size=(300, 8))
    inputs = {"features": x.astype(np.float32), "user_tags": strings(noisy, names)}
    config = {
        "refine": {
            "knowledge": "none",
            "phi0_epochs": 30,
            "epochs": 2,
            "hidden": 64,
            "n_candidates": 32,
            "extra_backbones": [],
        },
        "rpca": {"lam": 0.17},
    }.get(name)
    _, refined = refine_scores(name, inputs, noisy, names, config=config, progress=False)
    assert mean_average_precision(truth, refined) > mean_average_precision(truth, noisy) + 0.05


def test_random_guess_is_deterministic_and_uniform():
    method = create_method("random_guess", seed=3).fit({"features": np.ones((5, 2))}, np.eye(5, 4))
    first = method.score({"features": np.ones((500, 2))})
    np.testing.assert_array_equal(first, method.score({"features": np.ones((500, 2))}))
    assert 0.45 < first.mean() < 0.55


def test_refine_learns_from_noisy_tags_and_records_history():
    x, truth = clustered_features(n=200, n_tags=4, dim=16, seed=0)
    noisy = simulate_user_noise(truth, drop_rate=0.3, add_rate=0.3, seed=0)
    names = [f"t{j}" for j in range(4)]
    config = {"knowledge": "none", "n_candidates": 20, "hidden": 64, "extra_backbones": []}
    method, refined = refine_scores("refine", {"features": x}, noisy, names, config=config, progress=False)
    assert refined.shape == truth.shape
    assert mean_average_precision(truth, refined) > mean_average_precision(truth, noisy) + 0.1
    stages = [h["stage"] for h in method.history_]
    assert stages.count("refine") == method.config.epochs and stages.count("phi0") == method.config.phi0_epochs
    assert all(np.isfinite(h["loss"]) for h in method.history_ if h["stage"] == "refine")


def test_refine_weighs_the_user_error_like_phi0():
    """L_err counts a user's tag pos_weight times (weighted_err); with weighted_err off it is the paper's plain norm."""
    x, truth = clustered_features(n=120, n_tags=4, dim=16, seed=1)
    noisy = simulate_user_noise(truth, drop_rate=0.3, add_rate=0.3, seed=1)
    base = {"knowledge": "none", "n_candidates": 20, "hidden": 32, "phi0_epochs": 5, "epochs": 1, "pos_weight": 5.0}
    base["extra_backbones"] = []  # plain feature arrays: the model's backbone alone
    errs = {}
    for weighted in (True, False):
        config = {**base, "weighted_err": weighted}
        method, _ = refine_scores("refine", {"features": x}, noisy, list("abcd"), config=config, progress=False)
        errs[weighted] = method.history_[-1]["err"]
    # Same φ0 and the same batches: the weighted term adds 4 x the error on the user's own tags.
    assert errs[True] > errs[False] > 0
    assert create_method("refine").config.pos_weight == 5.0 and create_method("refine").config.weighted_err


def test_refine_blends_the_neighbour_vote_into_new_photos_scores(tmp_path):
    """New photos: (1 − w)·φ + w·(the knn vote of the training photos' user tags); the training photos' refined
    scores stay φ's; the vote is saved with the model; vote_weight 0 (the paper) scores with φ alone."""
    from phototag.model import TagModel
    from phototag.model_checks import declared_shapes
    from phototag.vocab import TagVocabulary

    x, truth = clustered_features(n=150, n_tags=4, dim=16, seed=2)
    noisy = simulate_user_noise(truth, drop_rate=0.3, add_rate=0.3, seed=2)
    new, _ = clustered_features(n=30, n_tags=4, dim=16, seed=3)
    base = {"knowledge": "none", "n_candidates": 20, "hidden": 32, "phi0_epochs": 5, "epochs": 1, "vote_k": 10}
    base["extra_backbones"] = []  # plain feature arrays: the model's backbone alone
    method = create_method("refine", base).fit({"features": x}, noisy, tag_names=list("abcd"), progress=False)
    knn = create_method("knn", k=10, temperature=0.1).fit({"features": x}, noisy)
    phi, vote = method.phi_scores({"features": new}), knn.score({"features": new})
    assert not np.allclose(phi, vote)
    np.testing.assert_allclose(method.score({"features": new}), 0.2 * phi + 0.8 * vote, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(method.refined_scores_, method.phi_scores({"features": x}), rtol=1e-6)
    TagModel(method, TagVocabulary().fit([list("abcd")])).save(tmp_path / "model")
    loaded = TagModel.load(tmp_path / "model").method
    shapes = declared_shapes("refine", method.config_dict(), method.get_state()[1], "")
    assert shapes["vote/train_targets"] == (None, 4)  # the weight checks on loading know the vote's arrays
    np.testing.assert_array_equal(loaded.score({"features": new}), method.score({"features": new}))
    paper = create_method("refine", {**base, "vote_weight": 0.0})
    paper.fit({"features": x}, noisy, tag_names=list("abcd"), progress=False)
    np.testing.assert_array_equal(paper.score({"features": new}), paper.phi_scores({"features": new}))
    arrays, meta = paper.get_state()
    assert "vote" not in meta and not any(k.startswith("vote/") for k in arrays)
    with pytest.raises(ValueError, match="vote_weight must be between 0 and 1"):
        create_method("refine", vote_weight=1.5, extra_backbones=[]).fit({"features": x}, noisy, tag_names=list("abcd"))


def test_refine_extra_backbones_join_the_features(tmp_path):
    """extra_backbones: each backbone's features scaled to unit length and joined; the model reads them as
    backbone_features, keeps them after loading, and says which are missing."""
    from phototag.methods.base import MissingInputError
    from phototag.model import TagModel
    from phototag.vocab import TagVocabulary

    x, truth = clustered_features(n=120, n_tags=4, dim=16, seed=4)
    noisy = simulate_user_noise(truth, drop_rate=0.3, add_rate=0.3, seed=4)
    other = np.random.default_rng(4).normal(size=(120, 6)).astype(np.float32)
    config = {"knowledge": "none", "n_candidates": 20, "hidden": 32, "phi0_epochs": 5, "epochs": 1, "vote_k": 10}
    config["extra_backbones"] = []
    method = create_method("refine", {**config, "extra_backbones": ["efficientnet_lite2"]})
    assert method.data_keys == ("features", "backbone_features") and method.feature_backbones() == [
        "efficientnet_lite2"
    ]
    inputs = {"features": x, "backbone_features": {"efficientnet_lite2": other}}
    method.fit(inputs, noisy, tag_names=list("abcd"), progress=False)
    assert method.n_features_ == 16 + 6
    unit = np.concatenate([b / np.linalg.norm(b, axis=1, keepdims=True) for b in (x, other)], axis=1)
    plain = create_method("refine", config).fit({"features": unit}, noisy, tag_names=list("abcd"), progress=False)
    np.testing.assert_allclose(method.score(inputs), plain.score({"features": unit}), rtol=1e-5, atol=1e-6)
    TagModel(method, TagVocabulary().fit([list("abcd")])).save(tmp_path / "model")
    loaded = TagModel.load(tmp_path / "model").method
    assert loaded.data_keys == ("features", "backbone_features")
    np.testing.assert_array_equal(loaded.score(inputs), method.score(inputs))
    with pytest.raises(MissingInputError, match="efficientnet_lite2"):
        loaded.score({"features": x, "backbone_features": {"efficientnet_lite1": other}})
    assert create_method("refine", extra_backbones=[]).data_keys == ("features",)
    assert create_method("refine").feature_backbones() == ["efficientnet_lite2"]  # the default
    # A model saved before the setting existed (no extra_backbones in its file) still reads its own backbone alone.
    TagModel(plain, TagVocabulary().fit([list("abcd")])).save(tmp_path / "older")
    header_file = tmp_path / "older" / "phototag_model.json"
    header = json.loads(header_file.read_text())
    del header["config"]["extra_backbones"]
    header_file.write_text(json.dumps(header))
    older = TagModel.load(tmp_path / "older").method
    assert older.data_keys == ("features",)
    np.testing.assert_array_equal(older.score({"features": unit}), plain.score({"features": unit}))


def test_refine_rejects_bad_settings():
    with pytest.raises(ValueError, match="knowledge must be one of"):
        create_method("refine", knowledge="cyc").fit({"features": np.ones((4, 2))}, np.eye(4, 3), tag_names=NAMES)
    with pytest.raises(ValueError, match="needs the tag names"):
        create_method("refine", extra_backbones=[]).fit({"features": np.ones((4, 2))}, np.eye(4, 3))


# --- refine_dataset and the command -------------------------------------------------------------------------------
def test_refine_dataset_keeps_every_record_and_tag(synthetic_dataset, feature_cache, tmp_path):
    out = tmp_path / "refined"
    config = {"knowledge": "none", "phi0_epochs": 10, "epochs": 1, "n_candidates": 16, "hidden": 64}
    result = refine_dataset(synthetic_dataset, out, config=config, cache_dir=feature_cache, progress=False)
    source = Dataset.load(synthetic_dataset)
    refined = Dataset.load(out)
    report = json.loads((out / "dataset.json").read_text())["info"]["refinement"]
    assert report["records_in"] == report["records_out"] == len(source) == len(refined)
    assert report["user_tags"] == report["kept"] + report["removed"] + report["passed_through"] == 2 * len(source)
    assert sum(len(r.tags) for r in refined.records) == report["tags_out"]
    for before, after in zip(source.records, refined.records, strict=True):
        assert after.id == before.id and after.user_tags == before.user_tags
        assert after.meta["original_tags"] == before.tags
        info = after.meta["refine"]
        assert sorted(info["kept"] + info["removed"]) == sorted(t.lower().lstrip("#") for t in before.user_tags)
        assert sorted(after.tags) == sorted(info["kept"] + info["added"] + info["passed_through"])
        assert set(info["scores"]) >= set(info["kept"] + info["removed"])
    assert result.scores.shape == (len(source), len(result.vocab))


def test_train_sets_refines_threshold_on_the_validation_images(synthetic_dataset, feature_cache, tmp_path, caplog):
    """refine's blended scores have no common 0.3: `train` picks the global threshold with the best mean per-image
    F1 on the val photos, saves it with the model and reports the validation metrics under it."""
    from phototag.calibration import global_threshold
    from phototag.model import TagModel
    from phototag.pipeline import train

    config = {"knowledge": "none", "phi0_epochs": 10, "epochs": 1, "n_candidates": 16, "hidden": 64, "vote_k": 20}
    model = train(
        synthetic_dataset, method="refine", config=config, cache_dir=feature_cache, out=tmp_path / "m", progress=False
    )
    ds = Dataset.load(synthetic_dataset)
    _, val_records = ds.train_val(val_fraction=0.1, seed=0)
    scored = model.score_images([ds.image_path(r) for r in val_records], cache_dir=feature_cache)
    truth = model.vocab.transform([r.tags for r in val_records])
    assert model.decision.threshold == global_threshold(truth, scored.scores)
    assert TagModel.load(tmp_path / "m").decision.threshold == model.decision.threshold
    assert model.info["threshold_chosen_on"].startswith("validation")
    f1 = per_image_prf(truth, threshold_mask(scored.scores, model.decision.threshold, 15))["f1"].mean()
    assert model.info["validation"]["image_f1_mean"] == pytest.approx(f1)
    # Without validation images the threshold stays the seeds' 0.3, and train says so.
    for record in ds.records:
        record.split = "train" if record.split == "val" else record.split
    with caplog.at_level(logging.WARNING, logger="phototag.pipeline"):
        unchosen = train(ds, method="refine", config=config, cache_dir=feature_cache, val_fraction=0.0, progress=False)
    assert unchosen.decision.threshold == 0.3 and "threshold_chosen_on" not in unchosen.info
    assert "No validation images to choose the refine model's threshold on" in caplog.text


def test_refine_command_writes_dataset_and_report(synthetic_dataset, feature_cache, tmp_path, capsys):
    out, report = tmp_path / "refined", tmp_path / "report.json"
    code = main(
        [
            "--quiet",
            "refine",
            str(synthetic_dataset),
            "--out",
            str(out),
            "--method",
            "tag_cooccur",
            "--threshold",
            "0.7",
            "--report",
            str(report),
            "--cache-dir",
            str(feature_cache),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "user tags in: 144 = kept" in printed
    data = json.loads(report.read_text())
    # Every photo has user tags "<colour> photo": score(photo) = (P(photo | colour) + 1) / 2 = (24/25 + 1) / 2,
    # score(colour) = (1 + P(colour | photo)) / 2 = (1 + 24/73) / 2 < 0.7: colours are removed, "photo" kept.
    assert data["kept"] == 72 and data["removed"] == 72 and data["added"] == 0
    assert all(r.tags == ["photo"] for r in Dataset.load(out).records)


def test_refine_on_tag_only_data_reads_no_extra_backbone():
    """Without images, the default refine (Lite2 joined to the model's features) falls back to the tag-context
    features alone: there is no photo to run Lite2 on."""
    from phototag.data import ImageRecord

    rng = np.random.default_rng(5)
    records = [
        ImageRecord(id=str(i), file=None, tags=[], user_tags=list(rng.choice(list("abcdef"), 3, replace=False)))
        for i in range(40)
    ]
    config = {"knowledge": "none", "n_candidates": 10, "hidden": 16, "phi0_epochs": 2, "epochs": 1, "vote_k": 5}
    result = refine_dataset(Dataset(records, name="tags-only"), config=config, progress=False)
    assert result.method.config.extra_backbones == [] and result.method.data_keys == ("features",)
    assert result.scores.shape == (40, 6) and np.isfinite(result.scores).all()


def test_refine_command_errors_without_user_tags(tmp_path, capsys):
    from phototag.data import ImageRecord

    Dataset([ImageRecord(id="1", file=None, tags=["a"])], name="plain").save(tmp_path / "ds")
    assert main(["refine", str(tmp_path / "ds"), "--out", str(tmp_path / "out")]) == 2
    assert "has no user_tags to refine" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_refine_beats_user_tags_on_noisy_corel5k(corel5k_features):
    _, x, truth, train, _ = corel5k_features
    rows = train[:1500]
    noisy = simulate_user_noise(truth[rows], drop_rate=0.3, add_rate=0.3, seed=0)
    names = [f"w{j}" for j in range(truth.shape[1])]
    config = {"knowledge": "none", "phi0_epochs": 20, "epochs": 1, "hidden": 128, "n_candidates": 64}
    config["extra_backbones"] = []
    _, refined = refine_scores("refine", {"features": x[rows]}, noisy, names, config=config, progress=False)
    assert mean_average_precision(truth[rows], refined) > mean_average_precision(truth[rows], noisy) + 0.02


def test_methods_declare_that_they_refine_their_training_scores():
    """training_scores reads refined_scores_ from the methods that declare the capability, not by probing."""
    from phototag.methods import RefinesTrainingScores, get_method_class

    candidates = ("refine", "tag_vote", "rpca", "user_tags", "tag_cooccur", "knn")
    declared = {name for name in candidates if issubclass(get_method_class(name), RefinesTrainingScores)}
    assert declared == {"refine", "tag_vote", "rpca"}

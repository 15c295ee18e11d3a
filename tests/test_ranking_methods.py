"""drel, wsabie and svm beyond the conformance suite: losses, sampling, scikit-learn agreement, tag growth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import clustered_features
from phototag.methods import create_method
from phototag.methods._ranking import fit_global_platt, sample_negatives
from phototag.methods.svm import fit_linear_svms
from phototag.methods.wsabie import warp_loss
from phototag.metrics import average_precision, mean_average_precision

SMALL_DREL = {
    "backbones": [],
    "latent_dim": 32,
    "image_hidden": 64,
    "tag_hidden": 32,
    "tag_dim": 16,
    "activation": "relu",
    "dropout": 0.2,
}


@pytest.fixture(scope="module")
def task():
    x, y = clustered_features(n=200, n_tags=5, dim=16, seed=1)
    return x[:160], y[:160], x[160:], y[160:]


def test_sample_negatives_marks_relevant_draws_invalid():
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    rows = torch.tensor([0, 0, 1])
    negatives, valid = sample_negatives(targets, rows, 50, torch.Generator().manual_seed(0))
    assert negatives.shape == valid.shape == (3, 50)
    expected = targets[rows.unsqueeze(1), negatives] == 0
    assert torch.equal(valid, expected)
    assert valid.any() and not valid.all()


def test_warp_loss_matches_hand_computation():
    # One image, 5 tags; tag 0 relevant and scored below all others, so the first irrelevant draw violates.
    scores = torch.tensor([[0.0, 5.0, 5.0, 5.0, 5.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])
    draws = torch.randint(0, 5, (1, 10), generator=torch.Generator().manual_seed(3))
    trials = int(np.flatnonzero(draws[0].numpy() != 0)[0]) + 1
    rank = (5 - 1) // trials
    weight = sum(1.0 / j for j in range(1, rank + 1))
    loss = warp_loss(scores, targets, margin=1.0, max_trials=10, generator=torch.Generator().manual_seed(3))
    assert loss.item() == pytest.approx(weight * (1.0 - 0.0 + 5.0))


def test_warp_loss_is_zero_without_violations():
    scores = torch.tensor([[9.0, 0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    assert warp_loss(scores, targets, 1.0, 20, torch.Generator().manual_seed(0)).item() == 0.0


def test_linear_svms_match_scikit_learn(task):
    from sklearn.svm import LinearSVC

    x, y, _, _ = task
    x = (x - x.mean(0)) / x.std(0)
    w, b = fit_linear_svms(torch.from_numpy(x).double(), torch.from_numpy(y).double(), C=0.1, max_iter=500)
    for column in range(y.shape[1]):
        # A large intercept_scaling makes liblinear's penalty on the bias negligible, as in our formulation.
        ref = LinearSVC(C=0.1, loss="squared_hinge", intercept_scaling=1000, tol=1e-10, max_iter=200_000)
        ref.fit(x, y[:, column])
        np.testing.assert_allclose(w[:, column].numpy(), ref.coef_[0], atol=2e-3)
        np.testing.assert_allclose(b[column].item(), ref.intercept_[0], atol=2e-2)


def test_svm_platt_probabilities_keep_each_tags_ranking(task):
    x, y, xt, yt = task
    svm = create_method("svm").fit({"features": x}, y, val_inputs={"features": xt}, val_targets=yt, progress=False)
    margins, probs = svm.decision_function({"features": xt}), svm.score({"features": xt})
    assert ((probs > 0) & (probs < 1)).all()
    for j in range(y.shape[1]):
        assert average_precision(yt[:, j], probs[:, j]) == pytest.approx(average_precision(yt[:, j], margins[:, j]))


def test_global_platt_is_monotone_and_fits_the_rate():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(400, 5))
    targets = (scores + rng.normal(scale=0.5, size=scores.shape) > 1.0).astype(np.float32)
    a, b = fit_global_platt(scores, targets)
    assert a > 0
    probs = 1 / (1 + np.exp(-(a * scores + b)))
    assert probs.mean() == pytest.approx(targets.mean(), abs=0.01)


def test_drel_tag_matrix_is_the_bilinear_score(task):
    x, y, xt, _ = task
    drel = create_method("drel", max_epochs=3, **SMALL_DREL).fit({"features": x}, y, progress=False)
    net = drel.net_
    with torch.no_grad():
        latent = net.embed_images(torch.from_numpy(xt))
        tags = net.tag_net(net.tag_base + net.tag_offset)
        direct = (tags @ net.metric @ latent.T).T.numpy()
    np.testing.assert_allclose(drel._raw_scores(xt), direct, rtol=1e-5, atol=1e-5)
    assert drel.tag_matrix_.shape == (y.shape[1], SMALL_DREL["latent_dim"])


def test_drel_add_tags_keeps_old_scores(task):
    x, y, xt, _ = task
    drel = create_method("drel", max_epochs=10, **SMALL_DREL).fit({"features": x}, y, progress=False)
    before = drel.score({"features": xt})
    assert drel.add_tags(["new-a", "new-b"]) == [y.shape[1], y.shape[1] + 1]
    after = drel.score({"features": xt})
    assert after.shape == (len(xt), y.shape[1] + 2)
    np.testing.assert_array_equal(after[:, : y.shape[1]], before)


def test_drel_fits_balancing_offsets_that_survive_saving_and_new_tags(task, tmp_path):
    """balance > 0 (the default): offsets fitted on the training images' scores; a trained model makes balanced
    top-k decisions by default; the offsets survive saving, and a tag added later gets the median offset."""
    from phototag.model import DecisionRule, TagModel
    from phototag.vocab import TagVocabulary

    x, y, xt, _ = task
    y = y.copy()
    y[:, 0] = 1  # a tag every image carries: the offsets hold it back
    drel = create_method("drel", max_epochs=5, **SMALL_DREL).fit({"features": x}, y, progress=False)
    offsets = drel.rank_offset()
    assert offsets.shape == (y.shape[1],) and offsets[0] == offsets.min() < np.median(offsets)
    plain = create_method("drel", max_epochs=5, balance=0.0, **SMALL_DREL).fit({"features": x}, y, progress=False)
    assert plain.rank_offset() is None
    np.testing.assert_array_equal(plain.score({"features": xt}), drel.score({"features": xt}))
    assert type(drel).balanced_by_default
    vocab = TagVocabulary().fit([[f"t{i}" for i in range(y.shape[1])]])
    TagModel(drel, vocab, decision=DecisionRule(balanced=True)).save(tmp_path / "model")
    loaded = TagModel.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.rank_offset(), offsets)
    loaded.method.add_tags(["new"])
    assert loaded.method.rank_offset().shape == (y.shape[1] + 1,)
    assert loaded.method.rank_offset()[-1] == np.median(offsets)
    with pytest.raises(ValueError, match="balance and balance_strength must be >= 0"):
        create_method("drel", balance=-1.0, backbones=[]).fit({"features": x}, y, progress=False)


@pytest.mark.parametrize("name", ["drel", "knn"])
def test_update_learns_a_new_tag_and_keeps_old_ones(name, task):
    x, y, xt, yt = task
    old = y.shape[1] - 1
    # The old images here carry the new tag unlabelled (tags are drawn independently), so rehearsing them
    # (replay_size) would teach that it is absent; the rehearsal default is tested in test_online.py.
    config = {"max_epochs": 60, "patience": 15, "replay_size": 0, **SMALL_DREL} if name == "drel" else {"k": 10}
    # Initial training: the first 100 images, without the last tag.
    method = create_method(name, config).fit(
        {"features": x[:100]}, y[:100, :old], val_inputs={"features": xt}, val_targets=yt[:, :old], progress=False
    )
    old_map = mean_average_precision(yt[:, :old], method.score({"features": xt}))
    method.update({"features": x[100:]}, y[100:], progress=False, tag_names=[f"t{j}" for j in range(y.shape[1])])
    scores = method.score({"features": xt})
    assert scores.shape == yt.shape
    assert average_precision(yt[:, old], scores[:, old]) > 0.85, "the added tag was not learned"
    assert mean_average_precision(yt[:, :old], scores[:, :old]) > old_map - 0.02, "old tags lost quality"


def test_knn_update_equals_fitting_on_all_images(task):
    x, y, xt, _ = task
    grown = create_method("knn", k=7).fit({"features": x[:90]}, y[:90, :-1], progress=False)
    grown.update({"features": x[90:]}, y[90:], progress=False)
    padded = np.concatenate([np.pad(y[:90, :-1], ((0, 0), (0, 1))), y[90:]])
    direct = create_method("knn", k=7).fit({"features": x}, padded, progress=False)
    np.testing.assert_array_equal(grown.score({"features": xt}), direct.score({"features": xt}))


def test_methods_without_update_refuse_clearly(task):
    x, y, _, _ = task
    mlp = create_method("mlp", max_epochs=1).fit({"features": x}, y, progress=False)
    with pytest.raises(NotImplementedError, match="does not support online updates"):
        mlp.update({"features": x}, y, progress=False)


def test_update_rejects_fewer_columns(task):
    x, y, _, _ = task
    knn = create_method("knn").fit({"features": x}, y, progress=False)
    with pytest.raises(ValueError, match="at least the model's 5 tag columns"):
        knn.update({"features": x}, y[:, :2], progress=False)


def test_drel_rejects_bad_settings():
    with pytest.raises(ValueError, match="tag_init must be one of"):
        create_method("drel", tag_init="glove", backbones=[]).fit(
            {"features": np.ones((4, 2))}, np.eye(4)[:, :2], progress=False
        )
    with pytest.raises(ValueError, match="needs the tag names"):
        create_method("drel", tag_init="text", backbones=[]).fit(
            {"features": np.ones((4, 2))}, np.eye(4)[:, :2], progress=False
        )

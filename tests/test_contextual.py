"""The contextual tagger (user tags beside the image), the most_likely baseline, and user tags on the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from phototag.cli import main
from phototag.data import Dataset, ImageRecord
from phototag.methods import MissingInputError, create_method
from phototag.methods.contextual import MODE_KEYS
from phototag.metrics import average_precision, mean_average_precision
from phototag.model import TagModel
from phototag.pipeline import evaluate, train

COLOURS = ("red", "green", "blue")


def colour_task(n: int, seed: int):
    """Targets = one colour + one shape; the user tags name the colour (plus noise), the 'image' shows the shape.

    So tags-only can get the colours, image-only the shapes, and only image+tags both.
    """
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 3, n)
    shape = rng.integers(0, 2, n)
    targets = np.zeros((n, 5), dtype=np.float32)
    targets[np.arange(n), colour] = 1
    targets[np.arange(n), 3 + shape] = 1
    features = rng.normal(size=(n, 6)).astype(np.float32)
    features[:, 0] += 4 * (2 * shape - 1)
    user_tags = [[COLOURS[c], "photo", f"img{i}"] for i, c in enumerate(colour)]
    return features, user_tags, targets


NAMES = [*COLOURS, "circle", "square"]


@pytest.fixture(scope="module")
def fitted_modes():
    x, tags, y = colour_task(300, seed=0)
    xv, tags_v, yv = colour_task(100, seed=1)
    models = {}
    for mode in MODE_KEYS:
        models[mode] = create_method("contextual", mode=mode, max_epochs=25, patience=5).fit(
            {"features": x, "user_tags": tags},
            y,
            val_inputs={"features": xv, "user_tags": tags_v},
            val_targets=yv,
            progress=False,
            tag_names=NAMES,
        )
    return models


def test_modes_declare_their_inputs():
    assert create_method("contextual").data_keys == ("features", "user_tags")
    assert create_method("contextual", mode="tags").data_keys == ("user_tags",)
    assert create_method("contextual", mode="image").data_keys == ("features",)
    assert create_method("most_likely", data_key="features").data_keys == ("features",)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [("mode", "both", "mode must be one of"), ("pooling", "sum", "pooling must be one of"), ("layers", -1, "layers")],
)
def test_bad_settings_raise(setting, value, message):
    with pytest.raises(ValueError, match=message):
        create_method("contextual", **{setting: value})


def test_each_mode_learns_what_its_inputs_carry(fitted_modes):
    x, tags, y = colour_task(200, seed=2)
    inputs = {"features": x, "user_tags": tags}
    ap = {
        mode: [average_precision(y[:, j], m.score(inputs)[:, j]) for j in range(5)] for mode, m in fitted_modes.items()
    }
    # The user tags name the colour exactly; the image shows the shape (8 standard deviations apart).
    assert min(ap["tags"][:3]) == pytest.approx(1.0) and min(ap["image"][3:]) > 0.99
    assert max(ap["tags"][3:]) < 0.8 and max(ap["image"][:3]) < 0.6
    assert mean_average_precision(y, fitted_modes["image+tags"].score(inputs)) > 0.99


def test_image_without_user_tags_is_scored_from_the_image(fitted_modes):
    model = fitted_modes["image+tags"]
    x, _, y = colour_task(50, seed=3)
    scores = model.score({"features": x, "user_tags": [[] for _ in range(50)]})
    assert np.isfinite(scores).all()
    # Shapes still come from the image; the colours cannot be known.
    assert average_precision(y[:, 3], scores[:, 3]) > 0.99
    with torch.no_grad():
        net = model.net_
        u = torch.zeros((50, model.embedding_dim_))
        expected = torch.sigmoid(net.net(torch.cat([u, (torch.from_numpy(x) - net.mean) / net.scale], 1))).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_unknown_and_limited_user_tags(fitted_modes):
    model = fitted_modes["tags"]
    # Tags on a single training image ("img7") are below tag_threshold = 2: out of vocabulary, slot 0.
    assert "img7" not in model.user_vocab_ and "red" in model.user_vocab_
    assert model.user_vocab_.encode([["red", "img7", "never-seen"]])[0] == [model.user_vocab_.index_["red"] + 1, 0, 0]
    np.testing.assert_array_equal(
        model.score({"user_tags": [["red", "img7"]]}), model.score({"user_tags": [["red", "zzz"]]})
    )
    x, tags, y = colour_task(100, seed=0)
    limited = create_method("contextual", mode="tags", tag_limit=1, epochs_without_val=2).fit(
        {"user_tags": tags}, y, progress=False
    )
    np.testing.assert_array_equal(
        limited.score({"user_tags": [["blue", "photo", "green"]]}), limited.score({"user_tags": [["blue"]]})
    )
    # Number-only tags are dropped like the seed's preprocessing.
    assert limited.user_vocab_.encode([["2019", "blue"]]) == [[limited.user_vocab_.index_["blue"] + 1]]


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_pooling_over_an_image_tags(pooling):
    x, tags, y = colour_task(60, seed=0)
    model = create_method("contextual", mode="tags", pooling=pooling, epochs_without_val=1).fit(
        {"user_tags": tags}, y, progress=False
    )
    table = model.net_.embedding.weight.detach()
    ids = model.user_vocab_.encode([["red", "photo"]])[0]
    pooled = model.net_.embedding(torch.tensor(ids), torch.tensor([0])).detach()[0]
    expected = table[ids].max(0).values if pooling == "max" else table[ids].mean(0)
    torch.testing.assert_close(pooled, expected)


def test_missing_user_tags_say_how_to_supply_them(fitted_modes):
    x, _, _ = colour_task(3, seed=0)
    with pytest.raises(MissingInputError, match=r"needs input 'user_tags'.*--user-tags"):
        fitted_modes["image+tags"].score({"features": x})


def test_save_load_keeps_user_vocabulary(fitted_modes, tmp_path):
    from phototag.vocab import TagVocabulary

    model = fitted_modes["tags"]
    TagModel(model, TagVocabulary(tags=NAMES)).save(tmp_path / "m")
    loaded = TagModel.load(tmp_path / "m")
    inputs = {"user_tags": [["green", "photo"], [], ["nothing"]]}
    np.testing.assert_array_equal(loaded.score_inputs(inputs), model.score(inputs))
    assert loaded.method.user_vocab_.tags_ == model.user_vocab_.tags_


def test_text_initialised_embeddings_are_the_tag_vectors():
    pytest.importorskip("sentence_transformers")
    from phototag.text import embed_tags

    x, tags, y = colour_task(40, seed=0)
    config = {"mode": "tags", "embedding_init": "text", "epochs_without_val": 1, "lr": 1e-12, "embedding_lr": 1e-12}
    model = create_method("contextual", config)
    model.fit({"user_tags": tags}, y, progress=False)
    table = model.net_.embedding.weight.detach().numpy()
    assert model.embedding_dim_ == 384
    np.testing.assert_allclose(table[1:], embed_tags(model.user_vocab_.tags_), atol=1e-5)


def test_most_likely_predicts_the_majority_labels():
    targets = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=np.float32)
    baseline = create_method("most_likely").fit({"user_tags": [[]] * 4}, targets, progress=False)
    # label 0 on 3/4 images (majority), label 1 on exactly half (not most), label 2 on 1/4.
    np.testing.assert_array_equal(baseline.score({"user_tags": [["x"], []]}), [[1, 0, 0], [1, 0, 0]])
    prior = create_method("most_likely", scores="prior").fit({"user_tags": [[]] * 4}, targets, progress=False)
    np.testing.assert_allclose(prior.score({"user_tags": [[]]}), [[0.75, 0.5, 0.25]])


# --- through the pipeline and the CLI ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tag_only_dataset(tmp_path_factory):
    """A tag-only dataset (file = None, like HARRISON/MIRFLICKR): targets follow from the user tags."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(600):
        colour = COLOURS[i % 3]
        split = "train" if i < 480 else ("val" if i < 540 else "test")
        noise = [f"n{int(rng.integers(0, 5))}"]
        records.append(
            ImageRecord(id=f"p{i}", file=None, tags=[f"{colour}-thing"], user_tags=[colour, *noise], split=split)
        )
    path = tmp_path_factory.mktemp("tag-only") / "ds"
    Dataset(records, name="tag-only").save(path)
    return path


def test_tags_only_model_trains_and_predicts_without_images(tag_only_dataset, tmp_path, capsys):
    model_dir = tmp_path / "model"
    argv = [
        "-q",
        "train",
        str(tag_only_dataset),
        "--method",
        "contextual",
        "--set",
        "mode=tags",
        "--out",
        str(model_dir),
    ]
    assert main(argv) == 0
    result = evaluate(model_dir, tag_only_dataset, progress=False)
    assert result["map"] == pytest.approx(1.0) and result["n_images"] == 60
    with open(tmp_path / "posts.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "user_tags"], ["a", "green n1"], ["b", "Blue"], ["c", ""]])
    capsys.readouterr()
    code = main(
        ["-q", "predict", str(model_dir), "--input", str(tmp_path / "posts.csv"), "--format", "jsonl", "--top-k", "1"]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [p["image"] for p in lines] == ["a", "b", "c"]
    assert [p["tags"][0]["tag"] for p in lines[:2]] == ["green-thing", "blue-thing"]


def test_most_likely_through_the_pipeline(tag_only_dataset):
    model = train(tag_only_dataset, method="most_likely", progress=False)
    # Each colour is on a third of the posts: no label is on most posts, so nothing is predicted.
    assert np.all(model.score_inputs({"user_tags": [["red"]]}) == 0)


@pytest.fixture(scope="module")
def image_tag_model(synthetic_dataset, tmp_path_factory, feature_cache):
    out = tmp_path_factory.mktemp("contextual") / "model"
    argv = ["-q", "train", str(synthetic_dataset), "--method", "contextual", "--set", "max_epochs=40"]
    assert main([*argv, "--set", "tag_threshold=1", "--cache-dir", str(feature_cache), "--out", str(out)]) == 0
    return out


def test_cli_predict_with_user_tags(image_tag_model, synthetic_photos, feature_cache, capsys):
    photo = str(synthetic_photos / "img" / "test" / "061.jpg")
    base = ["-q", "predict", str(image_tag_model), photo, "--format", "jsonl", "--top-k", "2"]
    code = main([*base, "--user-tags", "#Red photo"])
    out = capsys.readouterr().out
    assert code == 0 and len(json.loads(out)["tags"]) == 2
    # Without user tags the model says what it needs and how to give it; with an empty list it uses the image alone.
    assert main(base) == 2
    assert "needs input 'user_tags'" in capsys.readouterr().err
    assert main([*base, "--user-tags", ""]) == 0


def test_cli_batch_input_csv(image_tag_model, synthetic_photos, tmp_path, capsys):
    table = tmp_path / "batch.csv"
    test_dir = synthetic_photos / "img" / "test"
    files = sorted(test_dir.iterdir())[:3]
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "user_tags"])
        writer.writerows([[str(f), tag] for f, tag in zip(files, ["#Red photo", "", "#Blue"], strict=True)])
    code = main(["-q", "predict", str(image_tag_model), "--input", str(table), "--format", "jsonl"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [p["image"] for p in lines] == [str(f) for f in files]
    no_tags = tmp_path / "no-tags.csv"
    no_tags.write_text(f"file\n{files[0]}\n")
    assert main(["-q", "predict", str(image_tag_model), "--input", str(no_tags)]) == 2
    assert "'user_tags' column is needed" in capsys.readouterr().err


@pytest.mark.slow
def test_mirflickr_labels_from_user_tags_beat_most_likely(shared_data):
    """Real data: the 24 MIRFLICKR-25K labels from the user-tag bag alone (a 6,000-image slice keeps it fast)."""
    from phototag.importers import import_mirflickr

    dataset = import_mirflickr(shared_data / "mirflickr25k", seed=0, layout="matrices")
    vocab = dataset.fit_vocab()
    train_records, test_records = dataset.split("train")[:6000], dataset.split("test")
    inputs = {"user_tags": [r.user_tags for r in train_records]}
    targets = vocab.transform([r.tags for r in train_records])
    test_inputs = {"user_tags": [r.user_tags for r in test_records]}
    test_targets = vocab.transform([r.tags for r in test_records])
    contextual = create_method("contextual", mode="tags", epochs_without_val=8, batch_size=256).fit(
        inputs, targets, progress=False
    )
    baseline = create_method("most_likely").fit(inputs, targets, progress=False)
    context_map = mean_average_precision(test_targets, contextual.score(test_inputs))
    baseline_map = mean_average_precision(test_targets, baseline.score(test_inputs))
    # A constant score's AP is the label's prevalence; the user tags carry far more than that.
    assert baseline_map == pytest.approx(test_targets.mean(axis=0).mean(), abs=1e-6)
    assert context_map > baseline_map + 0.2

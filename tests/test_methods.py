"""The conformance suite every registered method passes, plus registry behaviour."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from conftest import clustered_features
from phototag.methods import (
    MissingInputError,
    NotFittedError,
    TaggingMethod,
    create_method,
    get_method_class,
    list_methods,
    register_method,
)
from phototag.metrics import mean_average_precision
from phototag.model import TagModel
from phototag.vocab import TagVocabulary

# Small settings so the whole suite stays fast; each method still has to learn the synthetic task.
FAST = {
    "mlp": {"max_epochs": 60, "patience": 10},
    "contextual": {"max_epochs": 40},
    # drel: ReLU learns this 120-image task in a few epochs; the paper's sigmoid needs far more steps.
    "drel": {"max_epochs": 40, "patience": 10, "latent_dim": 32, "image_hidden": 64, "tag_hidden": 32, "tag_dim": 16}
    | {"activation": "relu"},
    "wsabie": {"max_epochs": 40, "patience": 10, "embed_dim": 16, "lr": 0.01},
    "refine": {"phi0_epochs": 30, "epochs": 3, "knowledge": "none"},
    # 64 px is the smallest input where the pretrained Lite0 still gives informative pooled features.
    "cnn": {
        "input_size": 64,
        "transfer_epochs": 3,
        "finetune_epochs": 1,
        "optimizer": "adam",
        "lr": 1e-2,
        "loss": "bce",
        "augment": False,
        "batch_size": 16,
    },
    "merged": {
        "parts": [
            {
                "method": "ensemble",
                "config": {
                    "members": ["mlp@efficientnet_lite0"],
                    "member_config": {"mlp": {"max_epochs": 60, "patience": 10}},
                    "stack_folds": 2,
                    "combiner": "average",
                },
            },
            {
                "method": "ensemble",
                "config": {
                    "members": ["mlp@efficientnet_lite1"],
                    "member_config": {"mlp": {"max_epochs": 60, "patience": 10, "seed": 1}},
                    "stack_folds": 2,
                    "combiner": "average",
                },
            },
        ]
    },
    "ensemble": {
        "members": ["mlp@efficientnet_lite0", "knn@efficientnet_lite0"],
        "member_config": {"mlp": {"max_epochs": 60, "patience": 10}, "knn": {"k": 10}},
        "stack_folds": 2,
    },
}


# Baselines that cannot learn the synthetic task by design (its tags are independent, so the one user tag missing
# per image cannot be inferred from the others, and a constant prediction learns nothing); tests/test_refine.py and
# tests/test_contextual.py check them on tasks they can solve.
NOT_LEARNING = {
    "most_likely": "the same scores for every image",
    "random_guess": "uniform random scores",
    "user_tags": "echoes the noisy user tags",
    "tag_cooccur": "tag co-occurrence only",
    "rpca": "low-rank structure of the tag matrix only",
    "imagenet": "scores ImageNet concepts only; the synthetic tags t0..t3 are none of them",
}

#: Colours of the stripes that encode the task's tags in its images (tag j present = stripe j painted).
STRIPE_COLOURS = [(220, 30, 30), (30, 180, 40), (30, 60, 220), (230, 210, 30)]


def at_width(source: np.ndarray, name: str) -> np.ndarray:
    """``source`` as features of backbone ``name``: as they are, or with their columns repeated up to the width of a
    ``+sN`` backbone (its last layer and pooled stages)."""
    if "+s" not in name:
        return source
    from phototag.torch_backbones import pooled_widths

    width = sum(pooled_widths(name))
    return np.tile(source, (1, -(-width // source.shape[1])))[:, :width]


def make_inputs(
    method: TaggingMethod,
    features: np.ndarray,
    targets: np.ndarray,
    images: list[str] | None = None,
    backbone_features: dict[str, np.ndarray] | None = None,
) -> dict:
    inputs: dict = {}
    if "features" in method.data_keys:
        inputs["features"] = features
    if "backbone_features" in method.data_keys:
        source = next(iter(backbone_features.values())) if backbone_features else features
        inputs["backbone_features"] = {name: at_width(source, name) for name in method.feature_backbones()}
    if "images" in method.data_keys:
        inputs["images"] = images
    if "user_tags" in method.data_keys:
        # Noisy user tags: the true tag names, with one missing per image.
        inputs["user_tags"] = [[f"t{j}" for j in np.flatnonzero(row)][1:] for row in targets]
    return inputs


@pytest.fixture(scope="module")
def task():
    x, y = clustered_features(n=160, n_tags=4, dim=16, seed=0)
    return x[:120], y[:120], x[120:], y[120:]


@pytest.fixture(scope="module")
def task_images(task, tmp_path_factory) -> tuple[list[str], list[str]]:
    """Image files for the task (train, test): tag j present = vertical stripe j painted in its colour."""
    from PIL import Image, ImageDraw

    root = tmp_path_factory.mktemp("task-images")
    rng = np.random.default_rng(1)
    out: tuple[list[str], list[str]] = ([], [])
    for part, targets in ((0, task[1]), (1, task[3])):
        for i, row in enumerate(targets):
            image = Image.fromarray(rng.integers(100, 160, size=(48, 48, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(image)
            for j in np.flatnonzero(row):
                draw.rectangle((12 * j, 0, 12 * j + 11, 47), fill=STRIPE_COLOURS[j])
            path = root / f"{part}-{i}.png"
            image.save(path)
            out[part].append(str(path))
    return out


def test_registry_lists_spine_methods():
    assert {"knn", "mlp"} <= set(list_methods())


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown method 'nope'.*knn.*mlp"):
        create_method("nope")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_method("knn")(get_method_class("knn"))


def test_unknown_setting_lists_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['kk'\].*'k'"):
        create_method("knn", kk=3)


def test_none_override_keeps_default():
    assert create_method("knn", k=None).config.k == get_method_class("knn").Config().k


@pytest.mark.parametrize("name", list_methods())
def test_config_fields_are_documented_dataclass(name):
    cls = get_method_class(name)
    assert dataclasses.is_dataclass(cls.Config)
    assert cls.description, f"{name} needs a one-line description"


@pytest.fixture(scope="module")
def task_backbone_features(task_images, backbone) -> tuple[dict, dict]:
    """Real pooled Lite0 features of the task's images (train, test), for methods reading ``backbone_features``."""
    from phototag.features import FeatureStore

    store = FeatureStore(backbone, cache_dir=False)
    train, test = (store.extract(paths, progress=False).features for paths in task_images)
    return {backbone.spec.name: train}, {backbone.spec.name: test}


def _first_images(inputs: dict, n: int) -> dict:
    """The first ``n`` images of every input (per backbone for ``backbone_features``)."""
    return {k: ({b: f[:n] for b, f in v.items()} if isinstance(v, dict) else v[:n]) for k, v in inputs.items()}


@pytest.mark.parametrize("name", list_methods())
def test_conformance(name, task, tmp_path, request):
    x_train, y_train, x_test, y_test = task
    method = create_method(name, FAST.get(name))
    images_train, images_test = request.getfixturevalue("task_images") if "images" in method.data_keys else (None, None)
    bf_train, bf_test = (
        request.getfixturevalue("task_backbone_features") if "backbone_features" in method.data_keys else (None, None)
    )
    with pytest.raises(NotFittedError):
        method.score(make_inputs(method, x_test, y_test, images_test, bf_test))
    train_inputs = make_inputs(method, x_train, y_train, images_train, bf_train)
    test_inputs = make_inputs(method, x_test, y_test, images_test, bf_test)
    names = [f"t{j}" for j in range(y_train.shape[1])]
    fitted = method.fit(
        train_inputs, y_train, val_inputs=test_inputs, val_targets=y_test, progress=False, tag_names=names
    )
    assert fitted is method
    scores = method.score(test_inputs)
    assert scores.shape == y_test.shape and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    if name not in NOT_LEARNING:
        assert mean_average_precision(y_test, scores) > 0.9, "method failed to learn an easy synthetic task"
    assert method.score(_first_images(test_inputs, 0)).shape == (0, y_test.shape[1])

    vocab = TagVocabulary().fit([[f"t{j}" for j in range(y_train.shape[1])]])
    TagModel(method, vocab).save(tmp_path / "model")
    reloaded = TagModel.load(tmp_path / "model")
    np.testing.assert_array_equal(reloaded.score_inputs(test_inputs), scores)
    assert reloaded.method.config == method.config

    with pytest.raises(MissingInputError, match=name):
        method.score({})


def test_knn_scores_are_weighted_neighbour_votes():
    features = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    targets = np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float32)
    knn = create_method("knn", k=2, temperature=1.0).fit({"features": features}, targets, progress=False)
    scores = knn.score({"features": np.array([[1, 0]], dtype=np.float32)})
    sims = np.array([1.0, 0.9 / np.hypot(0.9, 0.1)])
    weights = np.exp(sims) / np.exp(sims).sum()
    np.testing.assert_allclose(scores[0], [1.0, weights[1]], rtol=1e-3)


def test_knn_rejects_bad_k():
    with pytest.raises(ValueError, match="must be an int >= 1"):
        create_method("knn", k=0).fit({"features": np.ones((2, 2))}, np.ones((2, 1)), progress=False)


def test_mlp_is_deterministic_for_a_seed(task):
    x_train, y_train, x_test, _ = task
    first = create_method("mlp", max_epochs=5, seed=3).fit({"features": x_train}, y_train, progress=False)
    second = create_method("mlp", max_epochs=5, seed=3).fit({"features": x_train}, y_train, progress=False)
    np.testing.assert_array_equal(first.score({"features": x_test}), second.score({"features": x_test}))


def test_mlp_keeps_best_validation_epoch(task):
    x_train, y_train, x_test, y_test = task
    mlp = create_method("mlp", max_epochs=30, patience=5).fit(
        {"features": x_train}, y_train, val_inputs={"features": x_test}, val_targets=y_test, progress=False
    )
    best = max(h["val_map"] for h in mlp.history_)
    assert mean_average_precision(y_test, mlp.score({"features": x_test})) == pytest.approx(best)


#: Methods that read photos (pixels or backbone features); the others never open an image file.
IMAGE_METHODS = [
    n for n in list_methods() if {"features", "backbone_features", "images"} & set(get_method_class(n).data_keys)
]
if "ensemble" not in IMAGE_METHODS:
    IMAGE_METHODS.append("ensemble")  # its inputs depend on its members (an instance attribute)


@pytest.mark.parametrize("name", IMAGE_METHODS)
def test_unreadable_photos_get_no_tags(name, task, task_images, task_backbone_features, tmp_path):
    """Every method that reads photos, behind a model: an unreadable photo is reported and gets no scores."""
    from phototag.backbones import resolve_spec

    _, y_train, _, y_test = task
    method = create_method(name, FAST.get(name))
    real_train = next(iter(task_backbone_features[0].values()))  # lite0 features, as the input layer computes them
    train_inputs = make_inputs(method, real_train, y_train, task_images[0], task_backbone_features[0])
    names = [f"t{j}" for j in range(y_train.shape[1])]
    method.fit(train_inputs, y_train, progress=False, tag_names=names)
    vocab = TagVocabulary().fit([names])
    model = TagModel(method, vocab, backbone_spec=resolve_spec("efficientnet_lite0"))
    good = task_images[1][:2]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(good[0]).read_bytes()[:100])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    svg = tmp_path / "drawing.jpg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    missing = tmp_path / "missing.jpg"
    paths = [good[0], str(truncated), str(empty), good[1], str(svg), str(missing)]
    user_tags = [["t0"]] * len(paths) if "user_tags" in method.data_keys else None
    predictions, failures = model.predict(paths, top_k=2, user_tags=user_tags)
    assert [p["image"] for p in predictions] == good
    assert [path for path, _ in failures] == [str(truncated), str(empty), str(svg), str(missing)]
    assert all(reason for _, reason in failures)
    scored = model.score_images(paths, user_tags=user_tags)
    assert scored.ok.tolist() == [True, False, False, True, False, False] and scored.scores.shape == (2, 4)

"""The ImageNet keyword mapping and the ``imagenet`` method (its conformance run is in tests/test_methods.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from phototag.imagenet_keywords import (
    DEFAULT_MAPPING,
    KEYWORD_PATTERN,
    MappingError,
    imagenet_class_names,
    load_mapping,
)
from phototag.methods import create_method
from phototag.methods.imagenet import class_probabilities, fit_platt, fold_keywords


@pytest.fixture(scope="module")
def mapping():
    return load_mapping()


def test_mapping_covers_every_class_in_order_with_clean_keywords(mapping):
    raw = yaml.safe_load(DEFAULT_MAPPING.read_text(encoding="utf-8"))
    assert [entry["id"] for entry in raw["classes"]] == list(range(1000))
    assert len(mapping.class_keywords) == 1000 and all(mapping.class_keywords)
    names = imagenet_class_names()
    assert [entry["class"] for entry in raw["classes"]] == names
    words = set(mapping.vocabulary()) | set(mapping.synonyms) | {p for ps in mapping.parents.values() for p in ps}
    unclean = sorted(w for w in words if not KEYWORD_PATTERN.match(w))
    assert not unclean, f"unclean keywords: {unclean}"
    # folding: far fewer keywords than classes, and the examples the issue names
    assert len(mapping.keywords()) < 800
    assert set(mapping.class_keywords[504]) >= {"coffee", "cup"}  # coffee mug
    assert "coffee" in mapping.class_keywords[967]  # espresso
    dogs = {i for i, ks in enumerate(mapping.class_keywords) if "dog" in ks}
    assert set(range(151, 269)) <= dogs
    assert all(mapping.class_detail[i] for i in range(151, 269)), "each breed is a detail keyword"
    assert {"mammal", "pet"} <= set(mapping.ancestors("dog")) and "animal" in mapping.ancestors("dog")
    assert "vehicle" in mapping.ancestors("car") and "cat" in mapping.class_keywords[281]


def test_class_names_file_matches_timm():
    timm_data = pytest.importorskip("timm.data")
    info = timm_data.ImageNetInfo()
    assert imagenet_class_names() == [info.index_to_description(i) for i in range(1000)]


def test_membership_sums_each_class_once(mapping):
    matrix, detail, mapped = mapping.membership(["dog", "animal", "cups", "chihuahua", "unknown-word"])
    assert matrix[151:269, 0].all() and matrix[:, 0].sum() >= 118
    assert (matrix[:, 1] >= matrix[:, 0]).all() and matrix[:, 1].max() == 1  # the union, each class once
    assert matrix[504, 2] == 1 and matrix[968, 2] == 1  # synonym "cups" -> cup
    assert detail.tolist() == [False, False, False, True, False]
    assert matrix[:, 3].sum() == 1 and matrix[151, 3] == 1
    assert mapped.tolist() == [True, True, True, True, False]
    probs = np.zeros((1, 1000))
    probs[0, 151], probs[0, 281] = 0.3, 0.6  # 30 % chihuahua, 60 % tabby cat
    raw = fold_keywords(probs, matrix, detail, detail_min_probability=0.5)
    np.testing.assert_allclose(raw[0], [0.3, 0.9, 0.0, 0.0, 0.0])  # animal = 0.3 + 0.6; breed not confident


def test_bad_mapping_names_file_and_entry(tmp_path, mapping):
    raw = yaml.safe_load(DEFAULT_MAPPING.read_text(encoding="utf-8"))
    raw["classes"][7]["keywords"] = ["Rooster!"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(MappingError, match=r"bad.yaml: classes\[7\]: keyword 'Rooster!' is not clean"):
        load_mapping(bad)
    raw = yaml.safe_load(DEFAULT_MAPPING.read_text(encoding="utf-8"))
    raw["parents"]["animal"] = ["dog"]
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(MappingError, match="cycle"):
        load_mapping(bad)


def test_fit_platt_recovers_a_known_sigmoid():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2))
    true_a, true_b = np.array([2.0, 0.5]), np.array([-1.0, 0.3])
    y = (rng.random(x.shape) < 1 / (1 + np.exp(-(true_a * x + true_b)))).astype(float)
    a, b = fit_platt(x, y)
    np.testing.assert_allclose(a, true_a, atol=0.1)
    np.testing.assert_allclose(b, true_b, atol=0.1)


def test_the_class_count_term_is_recovered_and_lowers_many_class_keywords():
    """The global calibration's term in log(number of classes a keyword sums), fitted with the global pair kept: it
    recovers a known weight, and a negative one lowers the scores of keywords summing many classes."""
    from phototag.methods.imagenet import _fit_count_term

    rng = np.random.default_rng(0)
    log_classes = np.log(np.array([1, 1, 2, 4, 30, 119], dtype=float))
    x = rng.normal(-2.0, 1.5, size=(4000, len(log_classes)))
    z = 0.9 * x + 0.3 - 0.4 * log_classes
    y = (rng.random(x.shape) < 1 / (1 + np.exp(-z))).astype(float)
    term = _fit_count_term(x, y, log_classes, 0.9, 0.3)
    assert abs(term - (-0.4)) < 0.05
    # Without the term the many-class keywords are overrated: their mean score runs above their positive rate.
    plain = 1 / (1 + np.exp(-(0.9 * x[:, -1] + 0.3)))
    with_term = 1 / (1 + np.exp(-(0.9 * x[:, -1] + 0.3 + term * log_classes[-1])))
    assert plain.mean() > 2 * y[:, -1].mean() and abs(with_term.mean() - y[:, -1].mean()) < 0.01


def test_scoring_needs_no_torch():
    code = "import sys, phototag.methods.imagenet; sys.exit('torch' in sys.modules or 'timm' in sys.modules)"
    src = Path(__file__).resolve().parents[1] / "src"
    assert subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(src)}).returncode == 0


@pytest.fixture(scope="module")
def example_features(backbone):
    pytest.importorskip("skimage")
    from phototag.cli import example_images
    from phototag.features import FeatureStore

    paths = {p.name: p for p in example_images()}
    if "coffee.png" not in paths:
        pytest.skip("scikit-image's sample photos are not installed")
    names = sorted(paths)
    result = FeatureStore(backbone, cache_dir=False).extract([paths[n] for n in names], progress=False)
    return names, {backbone.spec.name: result.features}


def test_coffee_photo_gets_coffee_or_cup_without_training(example_features, mapping, backbone):
    names, features = example_features
    vocab = mapping.vocabulary()
    method = create_method("imagenet", backbones=list(features))
    # No labelled photo: fit learns nothing (identity calibration), the classifier is ImageNet's own.
    method.fit({"backbone_features": features}, np.zeros((len(names), len(vocab))), tag_names=vocab, progress=False)
    np.testing.assert_array_equal(
        method.classifiers_[backbone.spec.name][0], backbone.classifier.weight.detach().numpy()
    )
    scores = method.score({"backbone_features": features})
    top = {name: [vocab[j] for j in np.argsort(-row)[:5]] for name, row in zip(names, scores, strict=True)}
    assert {"coffee", "cup"} & set(top["coffee.png"]), top["coffee.png"]
    assert "cat" in top["chelsea.png"], top["chelsea.png"]
    # the plain "features" input works for a one-backbone method, with identical scores
    same = method.score({"features": features[backbone.spec.name]})
    np.testing.assert_array_equal(same, scores)
    probs = class_probabilities(features, method.classifiers_)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # A backbone with pooled earlier stages ("+s16") gives wider features; the classifier reads the leading ones.
    staged_name = backbone.spec.name + "+s16"
    extra = np.random.default_rng(0).normal(size=(len(names), 112)).astype(np.float32)
    staged = {staged_name: np.concatenate([features[backbone.spec.name], extra], axis=1)}
    wide = create_method("imagenet", backbones=[staged_name])
    wide.fit({"backbone_features": staged}, np.zeros((len(names), len(vocab))), tag_names=vocab, progress=False)
    np.testing.assert_allclose(wide.score({"backbone_features": staged}), scores, rtol=1e-5, atol=1e-7)


def test_calibration_is_fitted_per_tag_and_globally(example_features, mapping):
    names, features = example_features
    tags = ["cat", "coffee", "cup", "sky", "nonsense"]
    targets = np.zeros((len(names), len(tags)))
    targets[names.index("chelsea.png"), 0] = 1
    targets[names.index("coffee.png"), 1:3] = 1
    method = create_method("imagenet", backbones=list(features), min_positives=1)
    method.fit({"backbone_features": features}, targets, tag_names=tags, progress=False)
    scores = method.score({"backbone_features": features})
    assert method.mapped_.tolist() == [True, True, True, False, False]
    assert (scores[:, 3:] == 0).all(), "tags the mapping does not know score 0"
    assert scores[names.index("chelsea.png"), 0] == scores[:, 0].max()
    assert scores[names.index("coffee.png"), 1] == scores[:, 1].max()
    with pytest.raises(ValueError, match="'calibration' setting"):
        create_method("imagenet", calibration="isotonic").fit(
            {"backbone_features": features}, targets, tag_names=tags, progress=False
        )


def test_targets_from_words_mark_keywords_and_their_parents(mapping):
    tags = ["tiger", "big cat", "mammal", "animal", "airplane", "sky"]
    targets = mapping.targets_from_words([["tiger", "grass"], ["plane"], ["sky"]], tags)
    assert targets.tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]]

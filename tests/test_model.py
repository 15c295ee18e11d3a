from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import clustered_features
from phototag.methods import create_method
from phototag.model import DecisionRule, ModelFormatError, TagModel, load_model
from phototag.vocab import TagVocabulary

SCORES = np.array([[0.9, 0.5, 0.31, 0.29, 0.1], [0.2, 0.1, 0.05, 0.0, 0.25]], dtype=np.float32)


def test_default_rule_is_threshold_03_at_most_15():
    chosen = DecisionRule().select(SCORES)
    assert [[i for i, _ in row] for row in chosen] == [[0, 1, 2], []]
    assert [s for _, s in chosen[0]] == pytest.approx([0.9, 0.5, 0.31])
    many = np.full((1, 40), 0.5, dtype=np.float32)
    assert len(DecisionRule().select(many)[0]) == 15


def test_top_k_alone_returns_exactly_k_whatever_the_scores():
    assert [i for i, _ in DecisionRule().select(SCORES, top_k=2)[1]] == [4, 0]
    assert all(len(row) == 4 for row in DecisionRule().select(SCORES, top_k=4))


def test_top_k_and_threshold_apply_both():
    assert [[i for i, _ in row] for row in DecisionRule().select(SCORES, top_k=2, threshold=0.3)] == [[0, 1], []]


def test_threshold_alone_keeps_the_cap():
    assert [i for i, _ in DecisionRule(max_tags=2).select(SCORES, threshold=0.0)[0]] == [0, 1]


def test_per_tag_thresholds():
    rule = DecisionRule(per_tag_threshold=np.array([0.95, 0.4, 0.3, 0.2, 0.2]))
    assert [[i for i, _ in row] for row in rule.select(SCORES)] == [[1, 2, 3], [4]]


def test_rank_offset_chooses_top_k_only_keeps_the_best_tag_and_the_scores():
    offset = np.array([-10.0, 0.0, 3.0, 0.0, 0.0])  # logit shifts: tag 2 (0.31) now outranks tags 1 (0.5) and 0
    # Each row's best-scoring tag stays (0 and 4), the offsets pick the second (2, not 1 or 0), listed by score.
    assert [[i for i, _ in row] for row in DecisionRule().select(SCORES, top_k=2, rank_offset=offset)] == [
        [0, 2],
        [4, 2],
    ]
    chosen = DecisionRule().select(SCORES, top_k=2, rank_offset=offset)
    assert [s for _, s in chosen[0]] == pytest.approx([0.9, 0.31])  # the reported scores are the probabilities
    assert DecisionRule().select(SCORES, top_k=1, rank_offset=offset) == DecisionRule().select(SCORES, top_k=1)
    # Without top_k the threshold rule ignores the offsets.
    assert DecisionRule().select(SCORES, rank_offset=offset) == DecisionRule().select(SCORES)


def test_categories_never_take_a_keywords_place_and_are_added_after_it():
    """Broad categories (tags 0 and 4 here) are left out of the ranking and added after the keywords when they reach
    the threshold, best first; the model's threshold is their bar for a top-k decision without one."""
    rule = DecisionRule(categories=np.array([True, False, False, False, True]))
    assert [[i for i, _ in row] for row in rule.select(SCORES, top_k=2)] == [[1, 2, 0], [1, 2]]
    assert [[i for i, _ in row] for row in rule.select(SCORES, top_k=2, threshold=0.2)] == [[1, 2, 0], [4, 0]]
    assert [[i for i, _ in row] for row in rule.select(SCORES)] == [[1, 2, 0], []]  # the 0.3 rule, at most 15
    capped = DecisionRule(max_tags=1, categories=rule.categories)
    assert [i for i, _ in capped.select(SCORES)[0]] == [1, 0]  # the cap counts keywords only
    # Fewer keywords than k: no category fills the gap below the threshold.
    assert [i for i, _ in rule.select(SCORES[:, :2], top_k=2)[1]] == [1]
    assert [s for _, s in rule.select(SCORES, top_k=1)[0]] == pytest.approx([0.5, 0.9])


def test_categories_are_saved_with_the_model(saved_model, tmp_path):
    model = TagModel.load(saved_model[0])
    model.decision.categories = np.isin(model.tags, model.tags[:1])
    model.save(tmp_path / "with-categories")
    loaded = TagModel.load(tmp_path / "with-categories")
    np.testing.assert_array_equal(loaded.decision.categories, model.decision.categories)
    scores = np.linspace(0.9, 0.1, len(loaded.tags), dtype=np.float32)[None]
    assert [loaded.tags[i] for i, _ in loaded.decision.select(scores, top_k=1)[0]] == [
        loaded.tags[1],
        loaded.tags[0],
    ]


def test_rule_thresholds_replace_the_models_own_and_can_lower_it():
    rule = DecisionRule().with_thresholds({3: 0.2, 0: 0.95}, 5)  # tag 3 lowered (0.29 now passes), tag 0 raised
    assert [[i for i, _ in row] for row in rule.select(SCORES)] == [[1, 2, 3], []]
    assert rule.select(SCORES, top_k=2) == DecisionRule().select(SCORES, top_k=2)  # top-k: the rules filter later
    assert DecisionRule().with_thresholds({}, 5) == DecisionRule()


def test_bad_top_k():
    with pytest.raises(ValueError, match="top_k must be an int >= 1"):
        DecisionRule().select(SCORES, top_k=0)


@pytest.fixture
def saved_model(tmp_path):
    x, y = clustered_features(n=40, n_tags=3)
    method = create_method("knn", k=5).fit({"features": x}, y, progress=False)
    vocab = TagVocabulary().fit([["a", "b", "c"]])
    rule = DecisionRule(per_tag_threshold=np.array([0.1, 0.2, 0.3], dtype=np.float32))
    return TagModel(method, vocab, decision=rule, info={"note": "test"}).save(tmp_path / "m"), x


def test_save_load_roundtrip(saved_model):
    path, x = saved_model
    model = TagModel.load(path)
    assert model.tags == ["a", "b", "c"] and model.info == {"note": "test"}
    np.testing.assert_array_equal(model.decision.per_tag_threshold, np.float32([0.1, 0.2, 0.3]))
    assert sorted(p.name for p in path.iterdir()) == ["phototag_model.json", "vocab.json", "weights.safetensors"]


def test_other_format_version_is_refused(saved_model):
    path, _ = saved_model
    header = json.loads((path / "phototag_model.json").read_text())
    header["format_version"] = 99
    (path / "phototag_model.json").write_text(json.dumps(header))
    with pytest.raises(ModelFormatError, match="model format version 99.*retrain"):
        TagModel.load(path)


def test_missing_and_foreign_directories(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        TagModel.load(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(ModelFormatError, match="not a phototag model directory"):
        TagModel.load(tmp_path / "other")


def test_save_refuses_foreign_folder_and_replaces_a_model(saved_model, tmp_path):
    path, _ = saved_model
    model = TagModel.load(path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a phototag model"):
        model.save(tmp_path / "other")
    model.info["note"] = "second"
    model.save(path)
    assert TagModel.load(path).info["note"] == "second"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_default_model_loads():
    model = load_model()
    assert len(model.tags) >= 200
    # Heads on backbone features; the backbones ship inside the model as ONNX graphs, so no export is needed.
    from phototag.backbone_spec import backbone_label
    from phototag.features import shared_runs
    from phototag.inputs import feature_specs
    from phototag.runtime import RunOptions, onnx_file_name

    specs = feature_specs(model.method, model.backbone_spec)
    assert list(specs) == [
        "efficientnet_lite1+full",
        "efficientnet_lite2+full",
        "efficientnet_lite1+s16+full",
        "efficientnet_lite2+s16+full",
    ]
    shipped = {p.name for p in (model.path / "backbones").glob("*.onnx")}
    assert shipped == {onnx_file_name(s) for s in specs.values()}
    # Tagging runs two networks: the +full features are the leading columns of the +s16+full ones.
    stores = model.stores(RunOptions(cache_dir=False))
    shared = shared_runs(list(stores.values()))
    assert {k: backbone_label(p.spec) for k, p in shared.items()} == {
        stores["efficientnet_lite1+full"].key: "efficientnet_lite1+s16+full",
        stores["efficientnet_lite2+full"].key: "efficientnet_lite2+s16+full",
    }
    assert [store.part_widths() for store in shared.values()] == [(1280, 112), (1280, 120)]
    assert (model.path / "backbones" / "NOTICE").is_file()
    # Corel5k words and the ImageNet keywords in one vocabulary; the mapping's broad words are categories, except
    # the Corel5k words among them (people, water, vehicle), which the Corel5k heads learnt as words.
    assert model.method.name == "merged" and len(model.tags) > 1000
    categories = {t for t, c in zip(model.tags, model.decision.categories, strict=True) if c}
    assert {"animal", "mammal", "furniture"} <= categories
    assert not {"dog", "sky", "sunset", "people", "water", "vehicle"} & categories
    assert {"people", "water", "vehicle"} <= set(model.tags)
    assert model.decision.balanced  # its top-k decisions are balanced unless a call says otherwise


def test_merge_models_scores_the_union_of_vocabularies(tmp_path):
    """Two fitted models with different words: the merged model scores every word; a shared one takes the max."""
    from phototag.methods import create_method
    from phototag.model import merge_models

    rng = np.random.default_rng(0)
    x = {"efficientnet_lite0": rng.normal(size=(40, 8)).astype(np.float32)}
    y_a = (rng.random((40, 3)) < 0.4).astype(np.float32)
    y_b = (rng.random((40, 2)) < 0.4).astype(np.float32)
    part = {"members": ["knn@efficientnet_lite0"], "stack_folds": 2, "member_config": {"knn": {"k": 5}}}
    a = create_method("ensemble", part).fit({"backbone_features": x}, y_a, progress=False)
    b = create_method("ensemble", part).fit({"backbone_features": x}, y_b, progress=False)
    model_a = TagModel(a, TagVocabulary().fit([["sky", "sea", "dog"]]))
    model_b = TagModel(b, TagVocabulary().fit([["cup", "dog"]]))
    merged = merge_models([model_a, model_b])
    assert merged.tags == [*model_a.tags, "cup"]
    inputs = {"backbone_features": x}
    scores = merged.score_inputs(inputs)
    sa, sb = a.score(inputs), b.score(inputs)
    dog_a, dog_b = model_a.tags.index("dog"), model_b.tags.index("dog")
    np.testing.assert_allclose(scores[:, merged.tags.index("dog")], np.maximum(sa[:, dog_a], sb[:, dog_b]))
    np.testing.assert_allclose(scores[:, merged.tags.index("cup")], sb[:, model_b.tags.index("cup")])
    merged.save(tmp_path / "merged")
    np.testing.assert_array_equal(TagModel.load(tmp_path / "merged").score_inputs(inputs), scores)
    with_category = merge_models([model_a, model_b], categories=["dog"])
    assert with_category.decision.categories.tolist() == [t == "dog" for t in merged.tags]
    with pytest.raises(ValueError, match="not tags of the merged models"):
        merge_models([model_a, model_b], categories=["animal"])


def test_merged_balancing_offsets_keep_their_sign(tmp_path):
    """A merged model's balancing offsets are its parts' own, negative ones included (a frequent word is held back);
    words of a part without offsets get 0, and a shared word the larger of its parts' offsets."""
    from phototag.methods import create_method
    from phototag.model import merge_models

    rng = np.random.default_rng(0)
    x = {"efficientnet_lite0": rng.normal(size=(60, 8)).astype(np.float32)}
    y = np.zeros((60, 3), np.float32)
    y[:, 0] = 1  # "sky" on every photo: the most frequent word, a negative offset
    y[:6, 1], y[6:12, 2] = 1, 1
    part = {"members": ["knn@efficientnet_lite0"], "stack_folds": 2, "member_config": {"knn": {"k": 5}}}
    balanced = {**part, "combiner": "average", "balance": 1.0, "balance_k": 1}
    a = create_method("ensemble", balanced).fit({"backbone_features": x}, y, progress=False)
    b = create_method("ensemble", part).fit({"backbone_features": x}, y[:, :2], progress=False)
    model_a = TagModel(a, TagVocabulary().fit([["sky", "sea", "dog"]]))
    model_b = TagModel(b, TagVocabulary().fit([["sky", "cup"]]))
    merged = merge_models([model_a, model_b])
    own = dict(zip(model_a.tags, a.rank_offset(), strict=True))
    offsets = dict(zip(merged.tags, merged.method.rank_offset(), strict=True))
    assert own["sky"] < 0 and offsets["sky"] == own["sky"]
    assert offsets["sea"] == own["sea"] and offsets["dog"] == own["dog"] and offsets["cup"] == 0
    # Offsets of the merged model itself, fitted on merged scores: they win over the parts', and are saved.
    inputs = {"backbone_features": x}
    scores = merged.method.merge_scores([a.score(inputs), b.score(inputs)])
    targets = np.zeros((60, len(merged.tags)), np.float32)
    targets[:, : len(model_a.tags)] = y
    fitted = merged.method.fit_offsets(targets, scores, np.arange(len(model_a.tags)), k=1, power=1.0)
    assert fitted[merged.tags.index("cup")] == 0 and fitted[merged.tags.index("sky")] < 0
    np.testing.assert_array_equal(merged.method.rank_offset(), fitted)
    merged.save(tmp_path / "merged")
    np.testing.assert_array_equal(TagModel.load(tmp_path / "merged").rank_offset(balanced=True), fitted)

from __future__ import annotations

import numpy as np
import pytest

from phototag.vocab import TagVocabulary, drop_reason, normalize_tag


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("#Sunset", "sunset"),
        ("new+york", "new york"),
        ("caf%C3%A9", "café"),
        ("  Blue   Sky ", "blue sky"),
        ("ＴＯＫＹＯ", "tokyo"),  # full-width letters (NFKC)
        ("##", ""),
    ],
)
def test_normalize_tag(raw, expected):
    assert normalize_tag(raw) == expected


def test_lemmatisation_as_harrison():
    pytest.importorskip("simplemma")
    assert normalize_tag("walking", lemmatize=True) == "walk"
    assert normalize_tag("walks", lemmatize=True) == "walk"
    assert normalize_tag("#Dogs", lemmatize=True) == "dog"


@pytest.mark.parametrize(
    "tag,reason",
    [("2019", "number"), ("12:30", "number"), ("canon", "camera"), ("nikon d750", "camera"), ("", "empty")],
)
def test_drop_reasons(tag, reason):
    assert drop_reason(tag) == reason


def test_drop_reason_keeps_ordinary_tags():
    assert drop_reason("sky") is None and drop_reason("f-16") is None and drop_reason("route 66") is None


def test_fit_orders_by_frequency_and_reports_drops():
    vocab = TagVocabulary(min_count=2).fit([["sky", "sea", "2019"], ["Sky", "#boat", "canon"], ["boat", "sky", "dog"]])
    assert vocab.tags_ == ["sky", "boat"]
    assert vocab.counts_ == {"sky": 3, "boat": 2}
    assert vocab.dropped_ == {"empty": 0, "number": 1, "camera": 1, "min_count": 2, "max_size": 0}


def test_max_size_and_tag_limit():
    lists = [["a", "b", "c"], ["b", "c"], ["c"]]
    assert TagVocabulary(max_size=2).fit(lists).tags_ == ["c", "b"]
    limited = TagVocabulary(tag_limit=1).fit(lists)
    assert limited.tags_ == ["a", "b", "c"] and limited.counts_ == {"a": 1, "b": 1, "c": 1}
    assert limited.transform([["b", "a"]]).tolist() == [[0.0, 1.0, 0.0]]


def test_transform_matches_multilabelbinarizer_and_reports_unknown():
    from sklearn.preprocessing import MultiLabelBinarizer

    lists = [["sky", "sea"], ["dog"], [], ["sea", "sea", "dog"]]
    vocab = TagVocabulary().fit(lists)
    expected = MultiLabelBinarizer(classes=vocab.tags_).fit_transform(lists)
    np.testing.assert_array_equal(vocab.transform(lists), expected)
    out = vocab.transform([["SKY", "plane", "plane", "Car"]])
    assert out.tolist() == [[float(t == "sky") for t in vocab.tags_]]
    assert vocab.last_unknown_ == {"plane": 1, "car": 1}
    assert vocab.inverse_transform(vocab.transform(lists)) == [sorted(set(t), key=vocab.tags_.index) for t in lists]


def test_encode_reserves_slot_zero_for_unknown():
    vocab = TagVocabulary(tags=["sky", "sea"])
    assert vocab.encode([["sea", "whale", "sky"], []], max_len=2) == [[2, 0], []]


def test_no_tag_left_is_a_clear_error():
    with pytest.raises(ValueError, match=r"No tag is left.*number: 2.*min_count"):
        TagVocabulary().fit([["2019"], ["2020"]])


def test_bad_params():
    with pytest.raises(ValueError, match="min_count must be an int >= 1"):
        TagVocabulary(min_count=0).fit([["a"]])


def test_unfitted_use_is_an_error():
    with pytest.raises(ValueError, match="not fitted"):
        TagVocabulary().transform([["a"]])


def test_add_tags_keeps_existing_columns():
    vocab = TagVocabulary(tags=["sky", "sea"])
    assert vocab.add_tags(["#Whale", "sky"]) == [2, 0]
    assert vocab.tags_ == ["sky", "sea", "whale"]


def test_save_load_roundtrip(tmp_path):
    vocab = TagVocabulary(min_count=1, tag_limit=3).fit([["sky", "sea"], ["sea"]])
    vocab.save(tmp_path / "v.json")
    loaded = TagVocabulary.load(tmp_path / "v.json")
    assert loaded.tags_ == vocab.tags_ and loaded.get_params() == vocab.get_params()
    assert loaded.counts_ == vocab.counts_
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a phototag vocabulary"):
        TagVocabulary.load(tmp_path / "bad.json")

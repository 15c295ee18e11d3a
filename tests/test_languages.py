"""Keywords in the user's language: the table, the pure functions, and --lang / --rules on the CLI and in XMP."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import default_model_keywords
from phototag.cli import main
from phototag.imagenet_keywords import load_mapping
from phototag.languages import (
    UnknownLanguageError,
    check_language,
    missing_translations,
    supported_languages,
    translate_predictions,
    translate_tag,
)
from phototag.model import default_model_path
from phototag.vocab import TagVocabulary

REQUIRED = {"en", "de", "fr", "es", "it", "nl"}


def default_vocabulary() -> list[str]:
    """The default model's words, less the detail keywords (dog and cat breeds: names that stay in English)."""
    details = set(load_mapping().detail_keywords())
    return [t for t in TagVocabulary.load(default_model_path() / "vocab.json").tags_ if t not in details]


def test_languages_include_the_required_ones_and_a_non_latin_script():
    languages = supported_languages()
    assert set(languages) >= REQUIRED
    assert {"ja", "ru"} & set(languages)
    assert list(languages)[0] == "en"


@pytest.mark.parametrize("lang", sorted(set(supported_languages()) - {"en"}))
def test_table_is_complete_for_the_default_vocabulary_and_the_imagenet_keywords(lang):
    assert missing_translations(default_vocabulary(), lang) == []
    assert missing_translations(load_mapping().keywords(), lang) == []
    assert translate_tag("dog", lang) != "dog"


def test_known_translations_and_fallbacks():
    assert [translate_tag("cat", code) for code in ("en", "de", "fr", "es", "it", "nl", "ja")] == [
        "cat",
        "Katze",
        "chat",
        "gato",
        "gatto",
        "kat",
        "猫",
    ]
    assert translate_tag("chihuahua", "de") == "chihuahua", "a word the table lacks stays as it is"
    assert check_language("DE") == "de" and check_language("de-CH") == "de" and check_language(None) == "en"


def test_unknown_language_is_one_line_listing_the_supported_ones():
    with pytest.raises(UnknownLanguageError, match=r"Unknown language 'xx'\. Supported languages: en \(English\), de"):
        check_language("xx")


def test_translate_predictions_merges_words_with_one_translation():
    predictions = [{"image": "a.jpg", "tags": [{"tag": "plane", "score": 0.4}, {"tag": "airplane", "score": 0.9}]}]
    assert translate_predictions(predictions, "de") == [{"image": "a.jpg", "tags": [{"tag": "Flugzeug", "score": 0.9}]}]
    assert translate_predictions(predictions, "en") == predictions


@pytest.fixture(scope="module")
def example_predictions():
    """The default model's English top 5 on the bundled sample photos (one run shared by the tests below)."""
    pytest.importorskip("skimage")
    from phototag.cli import example_images
    from phototag.model import load_model

    model = load_model()
    paths = [p for p in example_images() if p.name in ("chelsea.png", "rocket.jpg", "coffee.png")]
    predictions, failures = model.predict(paths, top_k=5)
    assert not failures
    return {p["image"]: p for p in predictions}


def run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_lang_de_gives_german_keywords(example_predictions, capsys):
    paths = list(example_predictions)
    code, out, _ = run(capsys, ["-q", "predict", str(default_model_path()), *paths, "--top-k", "5", "--lang", "de"])
    assert code == 0
    rows = [line.strip() for line in out.splitlines()]
    for path, english in example_predictions.items():
        german = rows[rows.index(path) + 1]
        for tag in english["tags"]:
            assert f"{translate_tag(tag['tag'], 'de')} ({tag['score']:.2f})" in german
    assert "Himmel" in out  # the rocket's sky


def test_cli_unknown_language_stops_before_any_work(capsys):
    with pytest.raises(SystemExit) as info:
        main(["tag", "--examples", "--lang", "klingon"])
    assert info.value.code == 2
    assert "Unknown language 'klingon'. Supported languages: en (English)" in capsys.readouterr().err


def test_tag_write_xmp_with_lang_and_rules(example_predictions, tmp_path, capsys):
    from phototag.xmp import XmpPacket, sidecar_path

    source = next(p for p in example_predictions if p.endswith("chelsea.png"))
    photo = tmp_path / "chelsea.png"
    shutil.copy(source, photo)
    english = [t["tag"] for t in example_predictions[source]["tags"]]
    blocked = default_model_keywords(english)[-1]  # the last keyword (broad categories such as animal follow it)
    rules = tmp_path / "rules.yml"
    rules.write_text(f"blocklist: [{blocked}]\n{english[0]}: {{parents: [animal]}}\n")
    code, out, err = run(
        capsys, ["-q", "tag", str(photo), "--top-k", "5", "--write", "xmp", "--lang", "de", "--rules", str(rules)]
    )
    assert code == 0, err
    keywords = XmpPacket.parse(sidecar_path(photo).read_bytes()).keywords
    expected = {translate_tag(t, "de") for t in english if t != blocked} | {"Tier"}
    assert expected <= set(keywords), keywords
    assert translate_tag(blocked, "de") not in keywords


def test_cli_rules_and_lang_in_jsonl(example_predictions, tmp_path, capsys):
    source = next(p for p in example_predictions if p.endswith("rocket.jpg"))
    top = example_predictions[source]["tags"][0]["tag"]
    rules = tmp_path / "rules.yml"
    rules.write_text(f"{top}: {{see: heaven}}\n")
    code, out, _ = run(capsys, ["-q", "tag", source, "--top-k", "5", "--format", "jsonl", "--rules", str(rules)])
    assert code == 0
    got = json.loads(out)
    assert got["tags"][0]["tag"] == "heaven" and top not in {t["tag"] for t in got["tags"]}

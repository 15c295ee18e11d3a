"""Rules files: parsing with clear errors, the pure apply functions, where the file comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from phototag.rules import (
    RULES_ENV,
    Rules,
    RulesError,
    apply_rules,
    apply_rules_to_tags,
    find_rules_file,
    label_thresholds,
    load_rules,
    parse_rules,
    rule_labels,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "rules.example.yml"


def tags(*pairs):
    return [{"tag": t, "score": s} for t, s in pairs]


def test_rename_block_rethreshold_and_parent():
    rules = parse_rules(
        {
            "blocklist": ["people"],
            "plane": {"see": "airplane"},
            "tabby": {"label": "cat"},  # PhotoPrism's name for a rename
            "cat": {"threshold": 0.5, "parents": ["animal", "pet"]},
            "pet": {"parents": ["animal"]},
            "sky": {"block": True},
        }
    )
    got = apply_rules_to_tags(
        tags(("people", 0.9), ("sky", 0.8), ("plane", 0.7), ("cat", 0.45), ("tabby", 0.6), ("tree", 0.2)), rules
    )
    # people and sky blocked; plane renamed; cat below its threshold, but tabby -> cat at 0.6 passes it (the
    # threshold of the renamed label applies when the original has none); cat adds animal and pet at its score.
    assert got == tags(("airplane", 0.7), ("animal", 0.6), ("cat", 0.6), ("pet", 0.6), ("tree", 0.2))


def test_parents_of_a_renamed_label_are_added():
    rules = parse_rules({"tabby": {"see": "cat", "parents": ["pet"]}, "cat": {"parents": ["animal"]}})
    assert apply_rules_to_tags(tags(("tabby", 0.8)), rules) == tags(("animal", 0.8), ("cat", 0.8), ("pet", 0.8))


def test_threshold_of_the_original_label_wins_and_duplicates_keep_the_best():
    rules = parse_rules({"kitty": {"see": "cat", "threshold": 0.9}, "cat": {"threshold": 0.1}})
    assert apply_rules_to_tags(tags(("kitty", 0.5), ("cat", 0.3)), rules) == tags(("cat", 0.3))
    assert apply_rules_to_tags(tags(("kitty", 0.95), ("cat", 0.3)), rules) == tags(("cat", 0.95))


def test_priority_orders_before_score_and_blocked_parents_stay_out():
    rules = parse_rules(
        {"blocklist": ["thing"], "sunset": {"priority": 2}, "sky": {"priority": -1}, "dog": {"parents": ["thing"]}}
    )
    got = apply_rules_to_tags(tags(("sky", 0.9), ("dog", 0.8), ("sunset", 0.3)), rules)
    assert [t["tag"] for t in got] == ["sunset", "dog", "sky"]


def test_apply_rules_keeps_the_prediction_shape_and_other_keys():
    predictions = [{"image": "a.jpg", "tags": tags(("plane", 0.7)), "extra": 1}]
    out = apply_rules(predictions, parse_rules({"plane": {"see": "airplane"}}))
    assert out == [{"image": "a.jpg", "tags": tags(("airplane", 0.7)), "extra": 1}]
    assert predictions[0]["tags"] == tags(("plane", 0.7)), "the input is not changed"
    assert apply_rules(predictions, Rules()) == predictions


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat: {threshold: 1.5}", r"rules.yml: 'cat.threshold': expected a number between 0 and 1\. Got 1\.5\."),
        ("cat: {colour: red}", r"rules.yml: 'cat.colour': unknown setting; valid settings: .*threshold"),
        ("cat: {parents: 3}", r"rules.yml: 'cat.parents': expected a list of labels"),
        ("cat: {priority: high}", r"rules.yml: 'cat.priority': expected a whole number"),
        ("cat: {block: maybe}", r"rules.yml: 'cat.block': expected true or false"),
        ("blocklist: people", r"rules.yml: 'blocklist': expected a list of labels"),
        ("a: {see: b}\nb: {see: a}", r"rules.yml: 'a': 'see' renames form a cycle: a -> b -> a"),
        ("- cat", r"rules.yml: a rules file is a mapping of label: rule\. Got list\."),
        ("cat: [", r"Rules file '.*rules.yml' is not valid YAML"),
    ],
)
def test_bad_rules_files_give_one_line_errors_with_file_and_key(tmp_path, text, message):
    path = tmp_path / "rules.yml"
    path.write_text(text)
    with pytest.raises(RulesError, match=message) as info:
        load_rules(path)
    assert "\n" not in str(info.value)


def test_where_the_rules_file_comes_from(tmp_path, monkeypatch):
    monkeypatch.delenv(RULES_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert find_rules_file() is None  # no per-user file: no rules
    user_file = tmp_path / "config" / "phototag" / "rules.yml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("sky: {block: true}\n")
    assert find_rules_file() == user_file
    env_file = tmp_path / "env.yml"
    env_file.write_text("sea: {block: true}\n")
    monkeypatch.setenv(RULES_ENV, str(env_file))
    assert find_rules_file() == env_file
    assert find_rules_file(user_file) == user_file  # explicit beats the environment
    assert find_rules_file("none") is None
    monkeypatch.setenv(RULES_ENV, str(tmp_path / "typo.yml"))
    with pytest.raises(RulesError, match=r"typo.yml' \(from \$PHOTOTAG_RULES\)"):
        find_rules_file()


def test_the_example_rules_file_in_the_docs_loads():
    rules = load_rules(EXAMPLE)
    assert rules.blocklist and rules.rules
    assert "animal" in rule_labels(rules)


def test_label_thresholds_for_a_models_tags():
    rules = parse_rules(
        {"tabby": {"see": "cat"}, "cat": {"threshold": 0.2}, "dog": {"threshold": 0.6}, "x": {"see": "y"}}
    )
    assert label_thresholds(rules, ["tabby", "cat", "dog", "sky", "x"]) == {"tabby": 0.2, "cat": 0.2, "dog": 0.6}

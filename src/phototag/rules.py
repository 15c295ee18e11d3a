"""A rules file for any model's tags: thresholds, renames (``see:``), parents, priority and a blocklist.

Modelled on PhotoPrism's ``rules.yml``: a YAML mapping of label -> rule, plus an optional top-level ``blocklist``::

    blocklist: [people, black]        # never shown
    tabby:
      see: cat                        # rename (synonym); PhotoPrism's `label:` is accepted too
    cat:
      threshold: 0.4                  # shown only when the model's score reaches 0.4
      parents: [animal, pet]          # added with the label (PhotoPrism's `categories:` too)
      priority: 2                     # higher first in the list; default 0, negative = last

Rules are applied after the model's own decision (threshold / top-k), to the prediction list of
:meth:`phototag.model.TagModel.predict` (``[{"image", "tags": [{"tag", "score"}]}]``), by :func:`apply_rules`, a pure
function. Thresholds also reach the decision itself (:func:`label_thresholds`, which the CLI and the service give
:meth:`phototag.model.TagModel.decision_with`): under the model's own rule (no ``--top-k`` / ``--threshold``)
a label's rule threshold replaces the model's threshold for it, so it can lower the bar as well as raise it; with
``--top-k`` or ``--threshold`` it only drops what the decision returned below it.

Where rules come from (:func:`find_rules_file`): ``--rules FILE``, else ``$PHOTOTAG_RULES``, else
``~/.config/phototag/rules.yml`` (``$XDG_CONFIG_HOME/phototag/rules.yml``) when it exists; ``--rules none`` (or
``PHOTOTAG_RULES=none``) turns rules off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import BadInputError

RULES_ENV = "PHOTOTAG_RULES"
#: Keys a rule may have (PhotoPrism's names on the right are accepted as aliases).
RULE_KEYS = {"see": "see", "label": "see", "threshold": "threshold", "parents": "parents", "categories": "parents"}
RULE_KEYS |= {"priority": "priority", "block": "block"}
#: ``--rules none`` / ``PHOTOTAG_RULES=none``: no rules at all, not even the per-user file.
NO_RULES = "none"


class RulesError(BadInputError):
    """The rules file is malformed (the one-line message names the file and the key)."""

    code = "invalid_rules"


@dataclass(frozen=True)
class Rule:
    """What to do with one label. ``None`` fields leave the label as the model gave it."""

    see: str | None = None  # rename the label to this one
    threshold: float | None = None  # drop the label below this score
    parents: tuple[str, ...] = ()  # labels added with this one (same score)
    priority: int = 0  # higher = earlier in the list
    block: bool = False  # never show the label


@dataclass(frozen=True)
class Rules:
    """A parsed rules file: label -> :class:`Rule`, plus the blocklist."""

    rules: dict[str, Rule] = field(default_factory=dict)
    blocklist: frozenset[str] = frozenset()
    source: str = "<rules>"

    def rule(self, label: str) -> Rule:
        return self.rules.get(label, Rule())

    def canonical(self, label: str) -> str:
        """The name ``label`` ends up as after following ``see:`` renames."""
        seen = [label]
        while (target := self.rule(seen[-1]).see) is not None:
            seen.append(target)
        return seen[-1]

    def threshold(self, label: str) -> float | None:
        """The threshold for a tag the model named ``label``: its own rule's, else the one of the label it becomes."""
        own = self.rule(label).threshold
        return own if own is not None else self.rule(self.canonical(label)).threshold

    def blocked(self, label: str) -> bool:
        return label in self.blocklist or self.rule(label).block

    def __bool__(self) -> bool:
        return bool(self.rules or self.blocklist)


def _where(source: str, key: str) -> str:
    return f"{source}: '{key}'"


def parse_rules(data: Any, source: str = "<rules>") -> Rules:
    """Rules from the YAML data of a rules file (a mapping), checked.

    Raises:
        RulesError: Not a mapping, an unknown key, a wrong type, a threshold outside [0, 1], a ``see:`` cycle.
    """
    if data is None:
        return Rules(source=source)
    if not isinstance(data, Mapping):
        raise RulesError(f"{source}: a rules file is a mapping of label: rule. Got {type(data).__name__}.")
    blocklist_raw = data.get("blocklist") or []
    if not isinstance(blocklist_raw, list) or not all(isinstance(x, str) for x in blocklist_raw):
        raise RulesError(f"{_where(source, 'blocklist')}: expected a list of labels. Got {blocklist_raw!r}.")
    rules: dict[str, Rule] = {}
    for label, body in data.items():
        if label == "blocklist":
            continue
        label = str(label)
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise RulesError(f"{_where(source, label)}: expected a mapping of settings. Got {body!r}.")
        values: dict[str, Any] = {}
        for key, value in body.items():
            if key not in RULE_KEYS:
                valid = ", ".join(sorted(RULE_KEYS))
                raise RulesError(f"{_where(source, f'{label}.{key}')}: unknown setting; valid settings: {valid}.")
            values[RULE_KEYS[key]] = _check_value(source, f"{label}.{key}", RULE_KEYS[key], value)
        rules[label] = Rule(**values)
    parsed = Rules(rules, frozenset(blocklist_raw), source)
    for label in rules:
        seen = [label]
        while (target := parsed.rule(seen[-1]).see) is not None:
            if target in seen:
                raise RulesError(
                    f"{_where(source, label)}: 'see' renames form a cycle: {' -> '.join([*seen, target])}."
                )
            seen.append(target)
    return parsed


def _check_value(source: str, key: str, field_name: str, value: Any) -> Any:
    where = _where(source, key)
    if field_name == "see":
        if not isinstance(value, str) or not value.strip():
            raise RulesError(f"{where}: expected the label to rename to. Got {value!r}.")
        return value.strip()
    if field_name == "threshold":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise RulesError(f"{where}: expected a number between 0 and 1. Got {value!r}.")
        return float(value)
    if field_name == "parents":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise RulesError(f"{where}: expected a list of labels. Got {value!r}.")
        return tuple(v.strip() for v in value)
    if field_name == "priority":
        if isinstance(value, bool) or not isinstance(value, int):
            raise RulesError(f"{where}: expected a whole number. Got {value!r}.")
        return value
    if not isinstance(value, bool):
        raise RulesError(f"{where}: expected true or false. Got {value!r}.")
    return value


def load_rules(path: str | os.PathLike) -> Rules:
    """Read and check a rules file.

    Raises:
        RulesError: Missing file, bad YAML, or a bad rule (see :func:`parse_rules`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError(f"Rules file not found: '{path}'.") from None
    except OSError as err:
        raise RulesError(f"Cannot read rules file '{path}': {err.strerror or err}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = str(err).replace("\n", " ")
        raise RulesError(f"Rules file '{path}' is not valid YAML: {problem}") from None
    return parse_rules(data, str(path))


def default_rules_path() -> Path:
    """The per-user rules file: ``$XDG_CONFIG_HOME/phototag/rules.yml`` (``~/.config/phototag/rules.yml``)."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "phototag" / "rules.yml"


def find_rules_file(explicit: str | os.PathLike | None = None) -> Path | None:
    """Which rules file applies: ``explicit``, else ``$PHOTOTAG_RULES``, else the per-user file if it exists.

    ``"none"`` (as ``explicit`` or in the environment) means no rules. An explicit or environment path that does
    not exist is an error (a typo must not silently drop the rules); a missing per-user file just means no rules.
    """
    for value in (explicit, os.environ.get(RULES_ENV) or None):
        if value is None:
            continue
        if str(value).strip().lower() == NO_RULES:
            return None
        path = Path(value).expanduser()
        if not path.is_file():
            origin = f"${RULES_ENV}" if value is not explicit else "--rules"
            raise RulesError(f"Rules file not found: '{path}' (from {origin}); give an existing file or 'none'.")
        return path
    path = default_rules_path()
    return path if path.is_file() else None


def resolve_rules(explicit: str | os.PathLike | None = None) -> Rules:
    """The rules in force (see :func:`find_rules_file`); empty rules when there is no file."""
    path = find_rules_file(explicit)
    return load_rules(path) if path is not None else Rules()


def apply_rules_to_tags(tags: Sequence[Mapping[str, Any]], rules: Rules) -> list[dict[str, Any]]:
    """One image's tags ``[{"tag", "score"}, ...]`` after the rules.

    In order: a label below its rule's threshold is dropped (the threshold of the label as the model named it,
    else of the label it is renamed to); renames follow ``see:``; blocked labels (original or renamed) are dropped;
    duplicates after renaming keep the best score; each label's ``parents`` (of the label and of the names renamed
    to it, transitively) are added with its score unless blocked or already there with a higher score. The result
    is sorted by priority (higher first), then score.
    """
    best: dict[str, float] = {}
    renamed_parents: dict[str, list[str]] = {}  # parents set on a label's original names (``tabby: {see: cat, ...}``)

    def offer(label: str, score: float) -> None:
        if not rules.blocked(label) and score > best.get(label, float("-inf")):
            best[label] = score

    for tag in tags:
        original, score = str(tag["tag"]), float(tag["score"])
        label = rules.canonical(original)
        threshold = rules.threshold(original)
        if (threshold is not None and score < threshold) or rules.blocked(original):
            continue
        offer(label, score)
        if original != label:
            renamed_parents.setdefault(label, []).extend(rules.rule(original).parents)
    for label, score in list(best.items()):
        todo, done = [*rules.rule(label).parents, *renamed_parents.get(label, [])], {label}
        while todo:
            parent = rules.canonical(todo.pop(0))
            if parent in done:
                continue
            done.add(parent)
            offer(parent, score)
            todo.extend(rules.rule(parent).parents)
    ordered = sorted(best.items(), key=lambda item: (-rules.rule(item[0]).priority, -item[1], item[0]))
    return [{"tag": label, "score": score} for label, score in ordered]


def apply_rules(predictions: Sequence[Mapping[str, Any]], rules: Rules) -> list[dict[str, Any]]:
    """Predictions ``[{"image", "tags": [{"tag", "score"}]}]`` with :func:`apply_rules_to_tags` on each image's tags
    (other keys of each prediction are kept). Without rules the predictions come back unchanged (as new lists)."""
    if not rules:
        return [dict(p) for p in predictions]
    return [{**p, "tags": apply_rules_to_tags(p["tags"], rules)} for p in predictions]


def label_thresholds(rules: Rules, tags: Sequence[str]) -> dict[str, float]:
    """The rule threshold (:meth:`Rules.threshold`) of each of a model's ``tags`` that has one."""
    thresholds = {tag: rules.threshold(tag) for tag in tags}
    return {tag: float(value) for tag, value in thresholds.items() if value is not None}


def rule_labels(rules: Rules) -> list[str]:
    """Every label a rules file can produce (renamed-to labels and parents), in file order, without repeats."""
    labels: dict[str, None] = {}
    for rule in rules.rules.values():
        for label in (rule.see, *rule.parents):
            if label is not None:
                labels[label] = None
    return list(labels)

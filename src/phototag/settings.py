"""Method settings as users write them: ``--set key=value`` pairs and YAML files (``--config FILE``).

Both only fill in a dictionary; :func:`phototag.methods.base.build_config` checks names and types against the
method's config dataclass. The commands, the benchmarks and the scripts read settings through here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import BadInputError


def parse_set_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["k=10", "lr=1e-3", "pos_weight=auto"]`` -> ``{"k": 10, "lr": 0.001, "pos_weight": "auto"}`` (YAML values).

    Raises:
        BadInputError: A pair without ``=`` or without a key.

    Example:
        >>> parse_set_options(["k=10", "lr=1e-3", "members=mlp@efficientnet_lite0"])
        {'k': 10, 'lr': 0.001, 'members': 'mlp@efficientnet_lite0'}
    """
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise BadInputError(f"--set expects key=value. Got {pair!r} instead.")
        try:
            values[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            values[key.strip()] = raw
    return values


def load_config_file(path: str | os.PathLike | None) -> dict[str, Any]:
    """The settings in a YAML file (a mapping of setting: value); ``None`` gives ``{}``.

    Raises:
        BadInputError: The file is missing, not YAML, or not a mapping (the message names it).
    """
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise BadInputError(f"Config file not found: '{path}'.") from None
    except yaml.YAMLError as err:
        raise BadInputError(f"Config file '{path}' is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInputError(f"Config file '{path}' must hold a mapping of setting: value. Got {type(data).__name__}.")
    return data


def method_settings(config_file: str | os.PathLike | None, pairs: Sequence[str] | None) -> dict[str, Any]:
    """The settings of ``--config FILE`` with the ``--set`` pairs on top."""
    settings = load_config_file(config_file)
    settings.update(parse_set_options(pairs or []))
    return settings

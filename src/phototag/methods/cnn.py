"""``cnn``: a pretrained CNN fine-tuned end to end for multi-label tagging (seeds 10 and 000).

Network: a timm backbone (:func:`phototag.backbones.create_backbone`, offline ImageNet weights for
EfficientNet-Lite0/1/2) whose pooled output (global average pooling) feeds a new head Dense 512 ReLU → Dropout 0.5 →
sigmoid. Training has two stages, as in the seeds: "transfer learn" (backbone frozen, only the head learns), then
"fine tune" (the last ``finetune_blocks`` blocks of the backbone unfrozen, at a lower learning rate). Augmentation:
rotation ±30°, shifts, zoom, shear, horizontal flip. Early stopping on validation F1 (per image, the seeds' rule:
score ≥ 0.3, at most 15 tags); the best epoch is kept. On CUDA it trains in mixed precision (bfloat16) with
channels_last. On CPU it trains by default from cached activations of the frozen part of the backbone
(``cached_trunk``, :mod:`phototag.trunk_cache`): each photo goes once through the layers before the last
``finetune_blocks`` blocks, for a few fixed views (centre, mirror, optional corner crops), and every epoch runs only
those blocks and the head on the cached activations.

The saved state is the *whole* fine-tuned network (backbone + head), so a ``cnn`` model directory is the size of the
backbone (~14 MB for Lite0) — unlike the feature-head methods, whose models hold heads only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..images import ImageLoadError, describe_failures, load_image
from ..losses import LOSSES, make_loss
from ..metrics import mean_average_precision, per_image_prf, threshold_mask
from ._training import BestEpoch
from .base import TaggingMethod, register_method

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")
_DEFAULT_LR = {"sgd": 1e-3, "adam": 1e-4}


@dataclass
class CNNConfig:
    backbone: str = "efficientnet_lite0"  # timm model name (offline weights: efficientnet_lite0/1/2)
    weights: str = "auto"  # backbone weights: "auto", "offline", "timm", "none" or a checkpoint file
    input_size: int | None = None  # square input side in pixels; None = the backbone's default (224 for Lite0)
    hidden: int = 512  # width of the head's ReLU layer
    dropout: float = 0.5  # dropout after the hidden layer
    loss: str = "weighted_bce"  # "bce", "weighted_bce" (seed 10), "bce_kl" (seed 000) or "asymmetric" (ASL)
    pos_weight: float = 10.0  # weight of positives in weighted_bce (seed 10 uses 10)
    kl_weight: float = 1.0  # weight of the KL term in bce_kl
    asl_gamma_neg: float = 4.0  # asymmetric loss: focusing exponent of negatives
    asl_gamma_pos: float = 0.0  # asymmetric loss: focusing exponent of positives
    asl_clip: float = 0.05  # asymmetric loss: probability margin below which negatives are ignored
    optimizer: str = "sgd"  # "sgd" (momentum, as seed 000) or "adam" (as seed 10); see docs/cnn_ensemble.md
    lr: float | None = None  # learning rate of the transfer stage; None = 1e-3 for sgd, 1e-4 for adam
    momentum: float = 0.9  # SGD momentum
    lr_decay: float = 1e-6  # Keras-style time decay per step: lr_t = lr / (1 + lr_decay * t)
    weight_decay: float = 0.0  # L2 penalty of the optimizer
    finetune_lr_scale: float = 0.1  # the fine-tune stage uses lr × this (unfrozen pretrained layers move gently)
    transfer_epochs: int = 10  # epochs of stage 1 (backbone frozen); 0 skips it
    finetune_epochs: int = 20  # epochs of stage 2 (last blocks unfrozen); 0 skips it
    finetune_blocks: int = 2  # how many of the backbone's last blocks stage 2 unfreezes
    patience: int = 4  # epochs without validation-F1 improvement before a stage stops
    batch_size: int = 32  # images per step
    augment: bool = True  # random affine + flip on training images
    rotation: float = 30.0  # augmentation: maximum rotation in degrees
    shift: float = 0.15  # augmentation: maximum shift as a fraction of the side
    zoom: float = 0.15  # augmentation: maximum zoom in or out (scale 1 ± zoom)
    shear: float = 10.0  # augmentation: maximum shear in degrees
    hflip: bool = True  # augmentation: random horizontal flip
    val_threshold: float = 0.3  # early-stopping metric: mean per-image F1 of tags scoring ≥ this (at most 15)
    num_workers: int | None = None  # image-loading worker processes; None = 4 on CUDA, 0 on CPU
    amp: bool = True  # mixed precision (bfloat16) and channels_last when training on CUDA
    device: str | None = None  # "cuda", "cpu", ...; None = CUDA when available
    resume_from: str | None = None  # a saved cnn model directory to start from (continue training it)
    # Fine-tuning that fits a CPU (docs/cnn_ensemble.md): the backbone up to the last `finetune_blocks` blocks is
    # frozen, so its activations are computed once per photo and view, cached on disk, and only those blocks + head
    # train on them. The views replace the random augmentation above.
    cached_trunk: bool | None = None  # train from cached activations of the frozen part; None = on when on CPU
    cache_flip: bool = True  # cached trunk: also cache each photo's mirror image (with augment and hflip)
    cache_crops: int = 0  # cached trunk: also cache this many corner crops (0-4; with augment), mirrored too
    seed: int = 0  # seeds the head's initialisation, augmentation, dropout and shuffling


def backbone_blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's trainable units from input to output, the units that "unfreeze the last N blocks" counts.

    A ``blocks``/``stages``/``layers`` container is split into its elements (EfficientNet's 7 stages); other
    top-level children with parameters are units of their own, and a normalisation layer joins the unit before it
    (EfficientNet-Lite0: stem+bn1, 7 stages, conv_head+bn2 = 9 units; ResNet: stem, layer1..4).
    """
    units: list[list[nn.Module]] = []
    for name, child in model.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if name in ("blocks", "stages", "layers", "features") and isinstance(child, nn.Sequential | nn.ModuleList):
            units.extend([block] for block in child)
        elif units and "norm" in type(child).__name__.lower():
            units[-1].append(child)
        else:
            units.append([child])
    return [unit[0] if len(unit) == 1 else nn.ModuleList(unit) for unit in units]


class _Network(nn.Module):
    """Backbone (pooled features) → Dense ReLU → Dropout → logits."""

    def __init__(self, backbone: nn.Module, n_features: int, hidden: int, n_tags: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_tags)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


class _ImageFiles(torch.utils.data.Dataset):
    """Decoded, transformed images by index; unreadable files give a zero image and ``ok=False`` (never raise)."""

    def __init__(self, paths: Sequence[str], transform, size: int):
        # Paths (training streams from disk) or decoded PIL pictures (scoring: the input layer decoded them once).
        self.paths = [p if hasattr(p, "mode") else str(p) for p in paths]
        self.transform = transform
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            source = self.paths[index]
            picture = source if not isinstance(source, str) else load_image(source)
            image = self.transform(picture)
            return image, index, True, ""
        except ImageLoadError as err:
            return torch.zeros(3, self.size, self.size), index, False, err.reason


def _augmentation(cfg: CNNConfig):
    from torchvision import transforms as T

    steps = [
        T.RandomAffine(
            degrees=cfg.rotation,
            translate=(cfg.shift, cfg.shift),
            scale=(1 - cfg.zoom, 1 + cfg.zoom),
            shear=cfg.shear,
            interpolation=T.InterpolationMode.BILINEAR,
            fill=0.0,  # on normalised tensors 0 is the mean colour
        )
    ]
    if cfg.hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)


@register_method("cnn")
class CNNTagger(TaggingMethod):
    """A pretrained CNN with a new multi-label head, trained in two stages on image files."""

    description = "pretrained CNN + Dense 512 head: transfer-learn, then fine-tune the last blocks on your photos"
    Config = CNNConfig
    data_keys = ("images",)

    # --- building -----------------------------------------------------------------------------------------------
    def _check_config(self) -> None:
        cfg = self.config
        if cfg.loss not in LOSSES:
            raise ValueError(f"cnn loss must be one of {LOSSES}. Got {cfg.loss!r} instead.")
        if cfg.optimizer not in OPTIMIZERS:
            raise ValueError(f"cnn optimizer must be one of {OPTIMIZERS}. Got {cfg.optimizer!r} instead.")
        if cfg.transfer_epochs < 0 or cfg.finetune_epochs < 0 or cfg.transfer_epochs + cfg.finetune_epochs < 1:
            raise ValueError(
                "cnn needs transfer_epochs + finetune_epochs >= 1 (both >= 0). "
                f"Got {cfg.transfer_epochs} and {cfg.finetune_epochs}."
            )
        if cfg.finetune_blocks < 0:
            raise ValueError(f"cnn finetune_blocks must be >= 0. Got {cfg.finetune_blocks} instead.")
        if not 0 <= cfg.cache_crops <= 4:
            raise ValueError(f"cnn cache_crops must be between 0 and 4. Got {cfg.cache_crops} instead.")

    def _device(self) -> torch.device:

        return (
            torch.device(self.config.device)
            if self.config.device
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )

    def _build(self, n_tags: int, weights: str | None = None, spec=None) -> None:
        from ..backbones import BackboneSpec, create_backbone

        cfg = self.config
        if spec is None:
            spec = BackboneSpec(name=cfg.backbone, weights=cfg.weights, input_size=cfg.input_size)
        if weights is not None:
            spec = dataclasses.replace(spec, weights=weights)
        backbone = create_backbone(spec)
        # The ImageNet classifier is not part of the tagger; dropping it keeps the saved state smaller.
        backbone.classifier = None
        self.spec_ = backbone.spec if weights is None else self.spec_
        self.transform_ = backbone.transform()
        self.network_ = _Network(backbone, backbone.num_features, cfg.hidden, n_tags, cfg.dropout)
        self.n_tags_ = n_tags

    def _loader(self, paths: Sequence[str], *, train: bool, device: torch.device, generator=None):
        cfg = self.config
        transform = self.transform_
        if train and cfg.augment:
            from torchvision import transforms as T

            transform = T.Compose([self.transform_, _augmentation(cfg)])
        workers = cfg.num_workers if cfg.num_workers is not None else (4 if device.type == "cuda" else 0)
        return torch.utils.data.DataLoader(
            _ImageFiles(paths, transform, int(self.spec_.input_size)),
            batch_size=cfg.batch_size,
            shuffle=train,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            generator=generator,
            persistent_workers=False,
        )

    def _autocast(self, device: torch.device):
        enabled = self.config.amp and device.type == "cuda"
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)

    def _to_device(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        if device.type == "cuda" and self.config.amp:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    # --- scoring ------------------------------------------------------------------------------------------------
    def _predict(self, paths: Sequence[str], *, progress: bool = False, desc: str = "cnn scoring") -> np.ndarray:
        """Sigmoid scores ``(n, n_tags)``; rows of unreadable images are 0 and the files are reported."""
        from tqdm.auto import tqdm

        device = self._device()
        net = self.network_.to(device).eval()
        if device.type == "cuda" and self.config.amp:
            net.to(memory_format=torch.channels_last)
        scores = np.zeros((len(paths), self.n_tags_), dtype=np.float32)
        failures: list[tuple[str, str]] = []
        with torch.inference_mode():
            for images, index, ok, reason in tqdm(
                self._loader(paths, train=False, device=device), desc=desc, unit="batch", disable=not progress
            ):
                with self._autocast(device):
                    out = torch.sigmoid(net(self._to_device(images, device)).float()).cpu().numpy()
                good = ok.numpy()
                scores[index.numpy()[good]] = out[good]
                failures += [(paths[int(i)], r) for i, g, r in zip(index, good, reason, strict=True) if not g]
        self.last_failures_ = failures
        if failures:
            log.warning("%s\nTheir scores are all 0.", describe_failures(failures))
        return scores

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        images = list(inputs["images"])
        scores = self._predict([im if hasattr(im, "mode") else str(im) for im in images])
        if self.last_failures_:
            # The input layer only passes photos it could decode; one that fails here changed on disk meanwhile.
            raise ValueError(describe_failures(self.last_failures_) + "\nThey changed while being tagged; run again.")
        return scores

    # --- training -----------------------------------------------------------------------------------------------
    def _validation_f1(self, paths: Sequence[str], targets: np.ndarray) -> tuple[float, float]:
        scores = self._predict(paths, desc="cnn validation")
        f1 = float(per_image_prf(targets, threshold_mask(scores, self.config.val_threshold, 15))["f1"].mean())
        return f1, mean_average_precision(targets, scores)

    def _resume(self, n_tags: int) -> None:
        from ..model import TagModel

        saved = TagModel.load(self.config.resume_from)
        if not isinstance(saved.method, CNNTagger):
            raise ValueError(
                f"resume_from '{self.config.resume_from}' holds a '{saved.method.name}' model; cnn can only resume "
                "from a saved cnn model."
            )
        if saved.method.n_tags_ != n_tags or saved.method.spec_.name != self.spec_.name:
            raise ValueError(
                f"resume_from '{self.config.resume_from}' scores {saved.method.n_tags_} tags with backbone "
                f"'{saved.method.spec_.name}', but this training has {n_tags} tags and backbone '{self.spec_.name}'."
            )
        self.network_.load_state_dict(saved.method.network_.state_dict())
        log.info("cnn: resumed from %s", self.config.resume_from)

    def _uses_cached_trunk(self, device: torch.device) -> bool:
        cached = self.config.cached_trunk
        return device.type == "cpu" if cached is None else bool(cached)

    def _optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)

    def fit(self, inputs, targets, *, val_inputs=None, val_targets=None, progress=True, tag_names=None):
        from tqdm.auto import tqdm

        self._check_config()
        cfg = self.config
        paths, y, val_paths, yv = self.check_image_data(inputs, targets, val_inputs, val_targets)
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        self._build(y.shape[1])
        if cfg.resume_from:
            self._resume(y.shape[1])
        device = self._device()
        net = self.network_.to(device)
        if device.type == "cuda" and cfg.amp:
            net.to(memory_format=torch.channels_last)
        have_val = val_paths is not None
        loss_fn = make_loss(
            cfg.loss,
            pos_weight=cfg.pos_weight,
            kl_weight=cfg.kl_weight,
            gamma_neg=cfg.asl_gamma_neg,
            gamma_pos=cfg.asl_gamma_pos,
            clip=cfg.asl_clip,
        )
        blocks = backbone_blocks(net.backbone.model)
        self.trunk_cache_: dict[str, Any] | None = None
        if self._uses_cached_trunk(device):
            source: _ImageBatches | _CachedTrunkBatches = _CachedTrunkBatches(
                self, blocks, paths, y, val_paths, yv, device=device, generator=generator, progress=progress
            )
            self.trunk_cache_ = source.info
        else:
            source = _ImageBatches(self, paths, y, val_paths, yv, device=device, generator=generator)
        self.history_: list[dict[str, Any]] = []
        # Validation F1 decides, mAP breaks ties; the best network so far is kept across both stages.
        tracker = BestEpoch(cfg.patience, floor=(-math.inf, -math.inf))
        step = 0
        lr0 = cfg.lr if cfg.lr is not None else _DEFAULT_LR[cfg.optimizer]
        stages = [
            ("transfer", cfg.transfer_epochs, 0, lr0),
            ("finetune", cfg.finetune_epochs, cfg.finetune_blocks, lr0 * cfg.finetune_lr_scale),
        ]
        for stage, epochs, n_unfrozen, lr in stages:
            if epochs == 0:
                continue
            tracker.new_stage(net)
            for param in net.backbone.parameters():
                param.requires_grad_(False)
            unfrozen = blocks[len(blocks) - min(n_unfrozen, len(blocks)) :] if n_unfrozen else []
            for unit in unfrozen:
                for param in unit.parameters():
                    param.requires_grad_(True)
            optimizer = self._optimizer([p for p in net.parameters() if p.requires_grad], lr)
            for epoch in range(epochs):
                net.train()
                # Frozen layers keep their ImageNet batch-norm statistics; only unfrozen units update theirs.
                net.backbone.eval()
                for unit in unfrozen:
                    unit.train()
                total, seen = 0.0, 0
                started = time.perf_counter()
                bar = tqdm(
                    source.batches(),
                    total=source.n_batches,
                    desc=f"cnn {stage} {epoch + 1}/{epochs}",
                    unit="batch",
                    disable=not progress,
                    leave=False,
                )
                for batch_inputs, batch_targets in bar:
                    for group in optimizer.param_groups:
                        group["lr"] = lr / (1.0 + cfg.lr_decay * step)
                    optimizer.zero_grad(set_to_none=True)
                    with self._autocast(device):
                        logits = source.forward(batch_inputs)
                    loss = loss_fn(logits.float(), batch_targets)
                    loss.backward()
                    optimizer.step()
                    step += 1
                    total += float(loss.item()) * len(batch_targets)
                    seen += len(batch_targets)
                    bar.set_postfix(loss=f"{total / max(seen, 1):.4f}")
                source.end_epoch()
                if seen == 0:
                    raise ValueError("cnn: none of the training images could be read.")
                record: dict[str, Any] = {
                    "stage": stage,
                    "epoch": len(self.history_) + 1,
                    "train_loss": total / seen,
                    "seconds": round(time.perf_counter() - started, 1),
                }
                if have_val:
                    f1, val_map = source.validation_f1()
                    record.update(val_f1=f1, val_map=val_map)
                    stop = tracker.update((f1, val_map), record["epoch"], net)
                    log.info(
                        "cnn %s epoch %d: loss %.4f, val F1 %.4f, val mAP %.4f",
                        stage,
                        epoch + 1,
                        total / seen,
                        f1,
                        val_map,
                    )
                self.history_.append(record)
                if have_val and stop:
                    break
        # Without validation there is no best epoch: the network of the last epoch is kept.
        tracker.restore(net)
        self.best_epoch_ = tracker.epoch or len(self.history_)
        self.n_failed_train_ = len(source.failed)
        for param in net.parameters():
            param.requires_grad_(False)
        self.network_ = net.eval()
        if have_val:
            log.info("cnn: best validation F1 %.4f (mAP %.4f) at epoch %d", *tracker.best, tracker.epoch)
        return self

    # --- state --------------------------------------------------------------------------------------------------
    def get_state(self):
        arrays = {k: v.detach().cpu().numpy() for k, v in self.network_.state_dict().items()}
        return arrays, {
            "n_tags": int(self.n_tags_),
            "backbone_spec": self.spec_.to_dict(),
            "best_epoch": self.best_epoch_,
            "history": getattr(self, "history_", []),
            "trunk_cache": getattr(self, "trunk_cache_", None),
        }

    def set_state(self, arrays, meta):
        from ..backbones import BackboneSpec

        self.spec_ = BackboneSpec.from_dict(meta["backbone_spec"])
        # The saved arrays hold every weight, so the backbone is built without loading pretrained ones.
        self._build(int(meta["n_tags"]), weights="none", spec=self.spec_)
        self.network_.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        for param in self.network_.parameters():
            param.requires_grad_(False)
        self.network_.eval()
        self.best_epoch_ = meta.get("best_epoch")
        self.history_ = list(meta.get("history", []))
        self.trunk_cache_ = meta.get("trunk_cache")


class _ImageBatches:
    """End-to-end training batches: image files decoded and augmented every epoch, the whole network run on them."""

    def __init__(self, tagger: CNNTagger, paths, targets, val_paths, val_targets, *, device, generator):
        self.tagger, self.paths, self.val_paths, self.val_targets = tagger, paths, val_paths, val_targets
        self.targets = torch.from_numpy(targets)
        self.device = device
        self.loader = tagger._loader(paths, train=True, device=device, generator=generator)
        self.n_batches = len(self.loader)
        self.failed: dict[int, str] = {}
        self._warned = False

    def batches(self):
        for images, index, ok, reason in self.loader:
            for i, good, why in zip(index.tolist(), ok.tolist(), reason, strict=True):
                if not good:
                    self.failed[i] = why
            if bool(ok.any()):
                targets = self.targets[index[ok]].to(self.device, non_blocking=True)
                yield self.tagger._to_device(images[ok], self.device), targets

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tagger.network_(images)

    def end_epoch(self) -> None:
        if self.failed and not self._warned:
            self._warned = True
            failures = [(self.paths[i], r) for i, r in sorted(self.failed.items())]
            log.warning(
                "%s\nThese %d of %d training images are left out.",
                describe_failures(failures),
                len(self.failed),
                len(self.paths),
            )

    def validation_f1(self) -> tuple[float, float]:
        return self.tagger._validation_f1(self.val_paths, self.val_targets)


class _CachedTrunkBatches:
    """Training batches from cached activations of the frozen trunk (:mod:`phototag.trunk_cache`): one cached view
    of each photo drawn at random per epoch, and only the tail (the unfrozen blocks, then pooling) and head run."""

    def __init__(
        self, tagger: CNNTagger, blocks, paths, targets, val_paths, val_targets, *, device, generator, progress
    ):
        from ..runtime import cache_root
        from ..trunk_cache import TrunkCache, cache_folder, fill_cache, split_backbone, trunk_fingerprint, view_names

        cfg = tagger.config
        self.tagger, self.device, self.generator, self.val_targets = tagger, device, generator, val_targets
        spec = tagger.spec_
        n_tail = min(cfg.finetune_blocks, len(blocks)) if cfg.finetune_epochs > 0 else 0
        model = tagger.network_.backbone.model
        trunk, self.tail = split_backbone(model, blocks, n_tail, int(spec.input_size))
        # The views are the cached path's augmentation: none without `augment`, no mirror images without `hflip`.
        self.views = view_names(cfg.augment and cfg.hflip and cfg.cache_flip, cfg.cache_crops if cfg.augment else 0)
        with torch.inference_mode():
            shape = tuple(
                trunk.to(device).eval()(torch.zeros(1, 3, spec.input_size, spec.input_size, device=device)).shape[1:]
            )
        options = getattr(tagger, "run_options", None)
        cache_dir = None if options is None else options.cache_dir
        if cache_dir is False:  # nothing on disk beyond this training: a folder removed when it ends
            self._tmp = tempfile.TemporaryDirectory(prefix="phototag-trunk-")
            root = self._tmp.name
        else:
            root = cache_root(cache_dir)
        folder = cache_folder(root, spec, trunk_fingerprint(trunk), n_tail, self.views)
        self.cache = TrunkCache(
            folder,
            (len(self.views), *shape),
            meta={"backbone": spec.to_dict(), "tail_blocks": n_tail, "views": self.views},
        )
        started = time.perf_counter()
        fill = dict(device=device, batch_size=cfg.batch_size, progress=progress)
        train = fill_cache(self.cache, paths, trunk, spec, self.views, **fill)
        val = fill_cache(self.cache, val_paths, trunk, spec, self.views, **fill) if val_paths else None
        seconds = time.perf_counter() - started
        self.failed = {i: r for i, (_, r) in zip(np.flatnonzero(train.rows < 0), train.failures, strict=True)}
        if train.failures:
            log.warning(
                "%s\nThese %d of %d training images are left out.",
                describe_failures(train.failures),
                len(train.failures),
                len(paths),
            )
        keep = train.rows >= 0
        self.rows = train.rows[keep]
        self.targets = torch.from_numpy(targets[keep])
        self.val_rows = None if val is None else val.rows
        self.n_batches = math.ceil(len(self.rows) / cfg.batch_size)
        self.batch_size = cfg.batch_size
        self.info = {
            "folder": str(folder) if cache_dir is not False else None,
            "views": self.views,
            "tail_blocks": n_tail,
            "activation_shape": list(shape),
            "photos": int(len(self.cache)),
            "computed": int(train.computed + (val.computed if val else 0)),
            "seconds": round(seconds, 1),
        }
        log.info(
            "cnn: trunk activations of %d photos x %d views ready in %.0f s (%d computed now) in %s",
            len(paths) + len(val_paths or []),
            len(self.views),
            seconds,
            self.info["computed"],
            folder,
        )

    def _inputs(self, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(self.cache.array[rows, views])).to(self.device)
        if batch.ndim == 4 and self.device.type == "cuda" and self.tagger.config.amp:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def batches(self):
        order = torch.randperm(len(self.rows), generator=self.generator).numpy()
        views = torch.randint(len(self.views), (len(self.rows),), generator=self.generator).numpy()
        for start in range(0, len(order), self.batch_size):
            chosen = np.sort(order[start : start + self.batch_size])  # memory-map reads in file order
            targets = self.targets[chosen].to(self.device, non_blocking=True)
            yield self._inputs(self.rows[chosen], views[chosen]), targets

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.tagger.network_.head(self.tail(activations))

    def end_epoch(self) -> None:
        pass

    def validation_f1(self) -> tuple[float, float]:
        """Validation F1 and mAP from the centre view, the scores the whole network gives the validation photos."""
        self.tagger.network_.eval()
        scores = np.zeros((len(self.val_rows), self.tagger.n_tags_), dtype=np.float32)
        readable = np.flatnonzero(self.val_rows >= 0)
        with torch.inference_mode():
            for start in range(0, len(readable), self.batch_size):
                chosen = readable[start : start + self.batch_size]
                inputs = self._inputs(self.val_rows[chosen], np.zeros(len(chosen), dtype=np.int64))
                with self.tagger._autocast(self.device):
                    scores[chosen] = torch.sigmoid(self.forward(inputs).float()).cpu().numpy()
        threshold = self.tagger.config.val_threshold
        f1 = float(per_image_prf(self.val_targets, threshold_mask(scores, threshold, 15))["f1"].mean())
        return f1, mean_average_precision(self.val_targets, scores)

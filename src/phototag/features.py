"""Pooled backbone features, extracted once and cached on disk.

The cache is keyed by the backbone spec (model, weights, preprocessing) and by each image's *content* (SHA-1 of the
file bytes), so renaming or copying photos costs nothing and every method trained on the same images and backbone
shares one extraction. Features are written in shards as extraction goes, each shard atomically (temp file + rename),
so an interrupted run resumes where it stopped. Unreadable images are reported by path and reason, never dropped
silently.

Layout::

    CACHE_DIR/<spec.cache_key()>/spec.json
    CACHE_DIR/<spec.cache_key()>/shard-<timestamp>-<n>.npz   # arrays "hashes" (n,) str, "features" (n, d) float32
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backbones import Backbone
from .fileio import atomic_write_text
from .images import DEFAULT_MAX_PIXELS, ImageLoadError, decode_image

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$PHOTOTAG_CACHE`` if set, else ``~/.cache/phototag``."""
    return Path(os.environ.get("PHOTOTAG_CACHE", Path.home() / ".cache" / "phototag"))


def best_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class FeatureResult:
    """Features for a list of images, in the order given.

    Attributes:
        features: ``(n_images, d)`` float32; rows of failed images are zeros.
        ok: ``(n_images,)`` bool, False where the image could not be read.
        failures: ``(path, reason)`` for each failed image.
    """

    features: np.ndarray
    ok: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)


def content_hash(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class FeatureStore:
    """Extracts and caches pooled features of one backbone.

    Args:
        backbone: The feature extractor (its resolved spec keys the cache).
        cache_dir: Root folder of the cache; ``None`` = :func:`default_cache_dir` / "features". ``False`` = keep
            features in memory only.
        memory: Keep extracted features in memory for later calls. ``False`` with ``cache_dir=False`` keeps
            nothing between calls (a long-running service scoring uploads, whose memory must not grow).
        device: Where to run the backbone; ``None`` = CUDA if available.
        batch_size: Images per forward pass.
        max_pixels: Decompression-bomb guard passed to :func:`phototag.images.decode_image`.

    Example:
        >>> store = FeatureStore(create_backbone("efficientnet_lite0"))  # doctest: +SKIP
        >>> result = store.extract(["a.jpg", "b.jpg"])  # doctest: +SKIP
        >>> result.features.shape  # doctest: +SKIP
        (2, 1280)
    """

    def __init__(
        self,
        backbone: Backbone,
        cache_dir: str | os.PathLike | None | bool = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        flush_every: int = 512,
        memory: bool = True,
    ):
        self.backbone = backbone
        self.memory = memory
        self.device = torch.device(device) if device is not None else best_device()
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.flush_every = flush_every
        self.key = backbone.spec.cache_key()
        if cache_dir is False:
            self.dir: Path | None = None
        else:
            root = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir() / "features"
            self.dir = root / self.key
        if not memory and self.dir is not None:
            raise ValueError(
                f"FeatureStore(memory=False) keeps nothing, so it needs cache_dir=False. Got {cache_dir!r}."
            )
        self._memory: dict[str, np.ndarray] = {}
        self._loaded = False
        self._transform = backbone.transform()
        self._on_device = False

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def _load_cache(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.dir is None or not self.dir.is_dir():
            return
        for shard in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as data:
                    hashes, features = data["hashes"], data["features"]
            except Exception as err:  # a damaged shard only costs re-extraction
                log.warning(
                    "Ignoring unreadable feature-cache shard %s (%s); its images will be re-extracted.", shard, err
                )
                continue
            if features.ndim != 2 or features.shape[1] != self.num_features:
                log.warning("Ignoring feature-cache shard %s with shape %s.", shard, features.shape)
                continue
            for digest, row in zip(hashes.tolist(), features, strict=True):
                self._memory[digest] = row

    def _flush(self, pending: dict[str, np.ndarray]) -> None:
        if not pending or self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        spec_file = self.dir / "spec.json"
        if not spec_file.exists():
            atomic_write_text(spec_file, json.dumps(self.backbone.spec.to_dict(), indent=2))
        name = f"shard-{time.time_ns()}-{len(pending)}.npz"
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as handle:
            np.savez(handle, hashes=np.array(list(pending)), features=np.stack(list(pending.values())))
        os.replace(tmp, self.dir / name)
        pending.clear()

    def _model(self) -> Backbone:
        if not self._on_device:
            self.backbone.to(self.device).eval()
            if self.device.type == "cuda":
                self.backbone.to(memory_format=torch.channels_last)
            self._on_device = True
        return self.backbone

    @torch.inference_mode()
    def _embed(self, tensors: list[torch.Tensor]) -> np.ndarray:
        batch = torch.stack(tensors).to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self._model()(batch).float().cpu().numpy()

    def extract(
        self, paths: Sequence[str | os.PathLike], *, progress: bool = True, desc: str = "features"
    ) -> FeatureResult:
        """Features of ``paths`` (cached ones read back, the rest computed and cached).

        Args:
            paths: Image files.
            progress: Show a tqdm progress bar (on stderr).
            desc: Label of the progress bar.

        Returns:
            A :class:`FeatureResult` aligned with ``paths``.
        """
        from tqdm.auto import tqdm

        self._load_cache()
        # Features of this call; they join the store's memory only when it keeps one.
        known = self._memory if self.memory else {}
        n = len(paths)
        features = np.zeros((n, self.num_features), dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        failures: list[tuple[str, str]] = []
        digests: list[str | None] = [None] * n
        todo: list[int] = []
        for i, path in enumerate(paths):
            try:
                data = Path(path).read_bytes()
            except OSError as err:
                failures.append((str(path), f"cannot read file ({err.strerror or err})"))
                continue
            digest = content_hash(data)
            digests[i] = digest
            cached = known.get(digest)
            if cached is not None:
                features[i], ok[i] = cached, True
            else:
                todo.append(i)
        if todo:
            pending: dict[str, np.ndarray] = {}
            bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, leave=False)
            batch_idx: list[int] = []
            batch_tensors: list[torch.Tensor] = []

            def run_batch() -> None:
                out = self._embed(batch_tensors)
                for j, row in zip(batch_idx, out, strict=True):
                    features[j], ok[j] = row, True
                    known[digests[j]] = row
                    pending[digests[j]] = row
                bar.update(len(batch_idx))
                batch_idx.clear()
                batch_tensors.clear()
                if len(pending) >= self.flush_every:
                    self._flush(pending)

            try:
                for i in todo:
                    if digests[i] in known:  # duplicate content within this call
                        features[i], ok[i] = known[digests[i]], True
                        bar.update(1)
                        continue
                    try:
                        image = decode_image(Path(paths[i]).read_bytes(), source=paths[i], max_pixels=self.max_pixels)
                    except ImageLoadError as err:
                        failures.append((err.path, err.reason))
                        bar.update(1)
                        continue
                    batch_idx.append(i)
                    batch_tensors.append(self._transform(image))
                    if len(batch_idx) >= self.batch_size:
                        run_batch()
                if batch_idx:
                    run_batch()
            finally:
                # Keep whatever was computed, also when interrupted: the next run resumes from here.
                self._flush(pending)
                bar.close()
        order = {str(path): i for i, path in enumerate(paths)}
        failures.sort(key=lambda item: order.get(item[0], n))
        return FeatureResult(features=features, ok=ok, failures=failures)

    def embed_images(self, images: Sequence) -> np.ndarray:
        """Features of already decoded PIL images (not cached), ``(n, d)`` float32."""
        out = []
        for start in range(0, len(images), self.batch_size):
            out.append(self._embed([self._transform(im) for im in images[start : start + self.batch_size]]))
        return np.concatenate(out) if out else np.zeros((0, self.num_features), np.float32)

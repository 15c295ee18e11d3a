"""Pooled backbone features: the one input layer from photos to what methods read, and the feature cache.

Every photo phototag scores goes through :func:`extract_features`: each file is read and hashed once and decoded
once (EXIF orientation, RGB, pixel guard, JPEG draft to the smallest size that still covers the largest backbone's
input); every backbone's preprocessing starts from that one decoded picture. Decoding runs in a pool of threads
that feeds batches to the backbones (ONNX Runtime, :mod:`phototag.runtime`) through a bounded window, so decoding
and inference overlap and memory stays flat however many photos there are.

Features are cached per backbone, keyed by the backbone spec and by each photo's *content* (SHA-1 of the bytes), so
renamed or copied photos cost nothing and every method on the same backbone shares one extraction. The cache is one
SQLite file per backbone (``CACHE_DIR/features/<spec key>/features.sqlite``): looked up row by row, never loaded
whole into memory, written batch by batch in transactions, so an interrupted run keeps what it computed and the
rerun resumes. Unreadable photos are reported by path and reason, never dropped silently, and get no features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backbone_spec import backbone_label, is_column_subset, pooled_strides, subset_columns
from .backbones import BackboneSpec, resolve_spec
from .fileio import atomic_write_text
from .images import DEFAULT_MAX_PIXELS, ImageLoadError, decode_image, read_image_bytes
from .preprocess import draft_request, preprocess
from .runtime import RunOptions, cache_root, default_cache_dir, load_backbone

log = logging.getLogger(__name__)

__all__ = [
    "FeatureResult",
    "FeatureStore",
    "ImageItem",
    "Extraction",
    "content_hash",
    "default_cache_dir",
    "extract_features",
]


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


@dataclass
class ImageItem:
    """One photo to read: a file ``path``, or uploaded ``data`` bytes; ``name`` is what reports call it."""

    name: str
    path: str | None = None
    data: bytes | None = None

    @classmethod
    def of(cls, value: str | os.PathLike | ImageItem) -> ImageItem:
        if isinstance(value, ImageItem):
            return value
        return cls(name=str(value), path=str(value))


def content_hash(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


# --- the cache ----------------------------------------------------------------------------------------------------
class _FeatureCache:
    """Features of one backbone by content hash: SQLite on disk, a dict in memory, or nothing."""

    def __init__(self, directory: Path | None, spec: BackboneSpec, *, memory: bool):
        self.dir = directory
        self.spec = spec
        self.memory: dict[str, np.ndarray] | None = {} if (memory and directory is None) else None
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._setup_lock = threading.Lock()
        self._ready = False

    def _connect(self) -> sqlite3.Connection | None:
        """This thread's connection; the database is set up once, by the first thread to need it."""
        if self.dir is None:
            return None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._setup_lock:  # connections open one at a time: setting up the file needs a moment alone with it
            self.dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.dir / "features.sqlite", timeout=60, check_same_thread=False)
            if not self._ready:
                _retry_locked(lambda: _set_up_database(conn))
                spec_file = self.dir / "spec.json"
                if not spec_file.exists():
                    atomic_write_text(spec_file, json.dumps(self.spec.to_dict(), indent=2))
                self._import_legacy_shards(conn)
                self._ready = True
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _import_legacy_shards(self, conn: sqlite3.Connection) -> None:
        """Fold the ``shard-*.npz`` files of phototag 0.1 into the database, each once (the files are left in place
        for older versions sharing the cache)."""
        assert self.dir is not None
        conn.execute("CREATE TABLE IF NOT EXISTS imported_shards (name TEXT PRIMARY KEY)")
        done = {row[0] for row in conn.execute("SELECT name FROM imported_shards")}
        for shard in sorted(self.dir.glob("shard-*.npz")):
            if shard.name in done:
                continue
            try:
                with np.load(shard, allow_pickle=False) as data:
                    hashes, features = data["hashes"], data["features"]
                rows = [(str(h), np.asarray(v, np.float32).tobytes()) for h, v in zip(hashes, features, strict=True)]
            except Exception as err:  # a damaged shard only costs re-extraction
                log.warning("Ignoring unreadable feature-cache shard %s (%s).", shard, err)
                continue
            with self._write_lock:
                conn.executemany("INSERT OR IGNORE INTO features VALUES (?, ?)", rows)
                conn.execute("INSERT OR IGNORE INTO imported_shards VALUES (?)", (shard.name,))
                conn.commit()

    def get(self, digest: str) -> np.ndarray | None:
        if self.memory is not None:
            return self.memory.get(digest)
        conn = self._connect()
        if conn is None:
            return None
        row = conn.execute("SELECT vector FROM features WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32)

    def put(self, rows: dict[str, np.ndarray]) -> None:
        if not rows:
            return
        if self.memory is not None:
            self.memory.update(rows)
            return
        conn = self._connect()
        if conn is None:
            return
        with self._write_lock:
            conn.executemany(
                "INSERT OR REPLACE INTO features VALUES (?, ?)",
                [(d, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for d, v in rows.items()],
            )
            conn.commit()

    def __len__(self) -> int:
        if self.memory is not None:
            return len(self.memory)
        conn = self._connect()
        return 0 if conn is None else int(conn.execute("SELECT COUNT(*) FROM features").fetchone()[0])


def _set_up_database(conn: sqlite3.Connection) -> None:
    # WAL lets readers (other threads, other processes on the same cache) go on while one writer commits.
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS features (digest TEXT PRIMARY KEY, vector BLOB NOT NULL)")
    conn.commit()


def _retry_locked(action: Callable[[], Any], attempts: int = 50) -> Any:
    """Run ``action``, retrying while another process holds the database (SQLite can answer "locked" at once when
    the journal mode changes, without waiting for its busy timeout)."""
    import time

    for attempt in range(attempts):
        try:
            return action()
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    return None


class FeatureStore:
    """Pooled features of one backbone: extracted with ONNX Runtime and cached by photo content.

    Args:
        backbone: The backbone: a :class:`~phototag.backbones.BackboneSpec`, a timm name, or a built torch
            :class:`~phototag.torch_backbones.Backbone` (its spec is used; it is exported to ONNX if needed).
        cache_dir: Root folder of the cache; ``None`` = :func:`default_cache_dir`. ``False`` = keep features in
            memory only.
        memory: With ``cache_dir=False``, keep extracted features in memory for later calls. ``False`` keeps nothing
            between calls (a long-running service scoring uploads, whose memory must not grow).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :class:`~phototag.runtime.RunOptions`).
        batch_size: Images per network call.
        max_pixels: Decompression-bomb guard passed to :func:`phototag.images.decode_image`.
        flush_every: Computed features are written to the cache at least every this many photos.
        options: Run options (device, threads, precision...); the keyword arguments above override them.
        search: Folders to look in for the backbone's ONNX graph before the cache (a model's ``backbones/``).

    Example:
        >>> store = FeatureStore("efficientnet_lite0")  # doctest: +SKIP
        >>> store.extract(["a.jpg", "b.jpg"]).features.shape  # doctest: +SKIP
        (2, 1280)
    """

    def __init__(
        self,
        backbone: Any,
        cache_dir: str | os.PathLike | None | bool = None,
        *,
        memory: bool = True,
        device: str | None = None,
        batch_size: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        flush_every: int = 256,
        options: RunOptions | None = None,
        search: Sequence[str | os.PathLike] = (),
    ):
        self._torch_backbone = None if isinstance(backbone, BackboneSpec | str) else backbone
        spec = backbone if isinstance(backbone, BackboneSpec | str) else backbone.spec
        self.spec = resolve_spec(spec)
        self.options = (options or RunOptions()).replace(device=device, batch_size=batch_size, cache_dir=cache_dir)
        self.max_pixels = max_pixels
        self.flush_every = flush_every
        self.search = list(search)
        # int8 backbones compute other features than fp32 ones: they never share a cache.
        self.key = self.spec.cache_key() + ("-int8" if self.options.precision == "int8" else "")
        if cache_dir is False:
            self.dir: Path | None = None
        else:
            self.dir = cache_root(cache_dir) / "features" / self.key
        if not memory and self.dir is not None:
            raise ValueError(
                f"FeatureStore(memory=False) keeps nothing, so it needs cache_dir=False. Got {cache_dir!r}."
            )
        self.cache = _FeatureCache(self.dir, self.spec, memory=memory)
        self._runtime = None

    @property
    def backbone(self):
        """The ONNX Runtime backbone (loaded, or exported once, on first use)."""
        if self._runtime is None:
            self._runtime = load_backbone(self.spec, self.options, search=self.search, backbone=self._torch_backbone)
        return self._runtime

    @property
    def num_features(self) -> int:
        width = self.backbone.num_features
        if width is None:
            from PIL import Image

            width = self._embed([preprocess(self.spec, Image.new("RGB", (8, 8)))]).shape[1]
        return int(width)

    def part_widths(self) -> tuple[int, ...] | None:
        """The widths of the parts of this backbone's features (its pooled last layer, then one per pooled earlier
        stride): recorded in its graph, else from timm's description of the network when torch is installed, else
        ``None``."""
        widths = self.backbone.part_widths
        if widths is None:
            try:
                from .torch_backbones import pooled_widths

                widths = pooled_widths(backbone_label(self.spec))
            except ImportError:
                return None
        return tuple(int(w) for w in widths)

    def columns_in(self, parent: FeatureStore) -> np.ndarray | None:
        """The columns of ``parent``'s features that are this store's (see :func:`shared_runs`), or ``None`` when
        ``parent``'s graph does not say how its output is made up."""
        widths, width = parent.part_widths(), parent.backbone.num_features
        if widths is None or (width is not None and sum(widths) != width):  # unknown, or not this graph's parts
            return None
        return subset_columns(self.spec, parent.spec, widths)

    def _embed(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Preprocessed photos, each ``(3, S, S)`` (``(3, H, W)`` for whole photos) → ``(n, d)`` features, one
        network call per shape."""
        return embed_by_shape(self.backbone, arrays)

    def extract(
        self, paths: Sequence[str | os.PathLike | ImageItem], *, progress: bool | None = None, desc: str = "features"
    ) -> FeatureResult:
        """Features of ``paths`` (cached ones read back, the rest computed and cached).

        Returns:
            A :class:`FeatureResult` aligned with ``paths``.
        """
        options = self.options if progress is None else self.options.replace(progress=progress)
        result = extract_features(paths, [self], options=options, desc=desc)
        return FeatureResult(features=result.features[self.key], ok=result.ok, failures=result.failures)

    def embed_images(self, images: Sequence) -> np.ndarray:
        """Features of already decoded PIL images (not cached), ``(n, d)`` float32."""
        out = []
        size = self.options.batch_size
        for start in range(0, len(images), size):
            out.append(self._embed([preprocess(self.spec, im) for im in images[start : start + size]]))
        return np.concatenate(out) if out else np.zeros((0, self.num_features), np.float32)


def embed_pictures(stores: Mapping[str, FeatureStore], pictures: Sequence) -> dict[str, np.ndarray]:
    """``{name: (n, d) features}`` of already decoded PIL images for every store (not cached); a store whose
    features are columns of another's (:func:`shared_runs`) takes them from that one's run."""
    shared = shared_runs(list(stores.values()))
    by_key = {store.key: store for store in stores.values()}
    computed: dict[str, np.ndarray] = {}
    for store in stores.values():
        if store.key not in shared and store.key not in computed:
            computed[store.key] = store.embed_images(pictures)
    for key, parent in shared.items():
        columns = by_key[key].columns_in(parent)
        computed[key] = by_key[key].embed_images(pictures) if columns is None else computed[parent.key][:, columns]
    return {name: computed[store.key] for name, store in stores.items()}


def embed_by_shape(network: Callable[[np.ndarray], np.ndarray], arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``network`` on preprocessed photos stacked by shape (square inputs are all one shape; whole photos,
    ``resize_mode="full"``, come in a few), rows back in the order given.

    Example:
        >>> net = lambda batch: batch.mean(axis=(2, 3))
        >>> arrays = [np.ones((3, 2, 4)), np.zeros((3, 4, 2)), np.full((3, 2, 4), 2.0)]
        >>> embed_by_shape(net, arrays)[:, 0].tolist()
        [1.0, 0.0, 2.0]
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, array in enumerate(arrays):
        groups.setdefault(array.shape, []).append(i)
    if len(groups) == 1:
        return network(np.stack(arrays))
    out: np.ndarray | None = None
    for rows in groups.values():
        features = network(np.stack([arrays[i] for i in rows]))
        if out is None:
            out = np.zeros((len(arrays), features.shape[1]), dtype=features.dtype)
        out[rows] = features
    assert out is not None
    return out


# --- the input layer ----------------------------------------------------------------------------------------------
def shared_runs(stores: Sequence[FeatureStore]) -> dict[str, FeatureStore]:
    """``{store key: the store whose backbone run also gives its features}`` among ``stores``: a store whose features
    are some of another's columns (the same network and preprocessing, the other pooling more earlier stages:
    ``efficientnet_lite1+full`` within ``efficientnet_lite1+s16+full``) takes them from that one's run, so each photo
    goes through the network once. Stores share only when they run the same way (device, threads, precision)."""

    def same_run(a: FeatureStore, b: FeatureStore) -> bool:
        settings = ("device", "threads", "precision")
        return (
            a._torch_backbone is None
            and b._torch_backbone is None
            and all(getattr(a.options, name) == getattr(b.options, name) for name in settings)
        )

    out = {}
    for store in stores:
        parents = [p for p in stores if same_run(store, p) and is_column_subset(store.spec, p.spec)]
        if parents:  # the one pooling the most stages: no store gives it its features
            out[store.key] = max(parents, key=lambda p: len(pooled_strides(p.spec)))
    return out


@dataclass
class Extraction:
    """What :func:`extract_features` returns, aligned with the items given.

    Attributes:
        features: ``{store key: (n_images, d) float32}``; rows of failed photos are zeros.
        ok: ``(n_images,)`` bool, False where the photo could not be read.
        failures: ``(name, reason)`` of each unreadable photo, in input order.
        images: Decoded RGB pictures (``None`` for failed photos) when ``keep_images`` was asked for.
    """

    features: dict[str, np.ndarray]
    ok: np.ndarray
    failures: list[tuple[str, str]]
    images: list[Any] | None = None


@dataclass
class _Loaded:
    index: int
    digest: str | None = None
    cached: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)  # stores whose features come from another store's run
    image: Any = None
    failure: str | None = None


def _read(item: ImageItem) -> bytes:
    return item.data if item.data is not None else read_image_bytes(item.path or item.name, name=item.name)


def _loader(
    items: Sequence[ImageItem],
    stores: Sequence[FeatureStore],
    *,
    keep_images: bool,
    max_pixels: int | None,
    shared: dict[str, FeatureStore],
) -> Callable[[int], _Loaded]:
    specs = [store.spec for store in stores if store.key not in shared]

    def load(index: int) -> _Loaded:
        item = items[index]
        out = _Loaded(index)
        try:
            data = _read(item)
            out.digest = content_hash(data)
            missing = []
            for store in stores:
                row = store.cache.get(out.digest)
                if row is None and store.key in shared:
                    out.shared.append(store.key)  # its features are columns of another store's (cached or run)
                elif row is None:
                    missing.append(store)
                else:
                    out.cached[store.key] = row
            if not missing and not keep_images:
                return out
            need = [s.spec for s in missing] or specs
            image = decode_image(
                data,
                source=item.name,
                max_pixels=max_pixels,
                draft=(lambda w, h: draft_request(need, w, h)) if need else None,
            )
            del data
            for store in missing:
                out.arrays[store.key] = preprocess(store.spec, image)
            if keep_images:
                out.image = image
        except ImageLoadError as err:
            out.failure = err.reason
        return out

    return load


def extract_features(
    items: Sequence[str | os.PathLike | ImageItem],
    stores: Sequence[FeatureStore],
    *,
    options: RunOptions | None = None,
    keep_images: bool = False,
    desc: str = "features",
) -> Extraction:
    """Read, decode and embed photos with every store's backbone at once (the pipelined input layer).

    Args:
        items: Photo paths or :class:`ImageItem` (uploaded bytes).
        stores: One :class:`FeatureStore` per backbone needed (possibly none, to only decode and check photos).
        options: Workers (decode threads), progress bar; each store keeps its own cache and backbone settings.
        keep_images: Also return the decoded pictures (methods that read pixels themselves, such as ``cnn``).
        desc: Label of the progress bar.

    Returns:
        An :class:`Extraction` aligned with ``items``.
    """
    from tqdm.auto import tqdm

    options = options or RunOptions()
    items = [ImageItem.of(item) for item in items]
    n = len(items)
    stores = list(stores)
    max_pixels = min((s.max_pixels for s in stores if s.max_pixels is not None), default=DEFAULT_MAX_PIXELS)
    features: dict[str, np.ndarray] = {}
    ok = np.zeros(n, dtype=bool)
    failures: dict[int, str] = {}
    images: list[Any] | None = [None] * n if keep_images else None
    pending: dict[str, tuple[list[int], list[np.ndarray], list[str]]] = {s.key: ([], [], []) for s in stores}
    unsaved: dict[str, dict[str, np.ndarray]] = {s.key: {} for s in stores}
    by_key = {s.key: s for s in stores}
    batch_size = max(1, min(s.options.batch_size for s in stores) if stores else options.batch_size)
    shared = shared_runs(stores)
    waiting: dict[str, dict[int, str]] = {key: {} for key in shared}  # photo index -> digest, per shared store
    load = _loader(items, stores, keep_images=keep_images, max_pixels=max_pixels, shared=shared)
    bar = tqdm(total=n, desc=desc, unit="img", disable=not options.progress or n == 0, leave=False)

    def width_of(store: FeatureStore, sample: np.ndarray) -> None:
        if store.key not in features:
            features[store.key] = np.zeros((n, sample.shape[-1]), dtype=np.float32)

    def run_batch(key: str) -> None:
        indices, arrays, digests = pending[key]
        if not indices:
            return
        store = by_key[key]
        out = store._embed(arrays)
        width_of(store, out[0])
        features[key][indices] = out
        unsaved[key].update(zip(digests, out, strict=True))
        pending[key] = ([], [], [])
        if len(unsaved[key]) >= store.flush_every:
            store.cache.put(unsaved[key])
            unsaved[key] = {}

    def consume(loaded: _Loaded) -> None:
        i = loaded.index
        if loaded.failure is not None:
            failures[i] = loaded.failure
            bar.update(1)
            return
        ok[i] = True
        for key, row in loaded.cached.items():
            width_of(by_key[key], row)
            features[key][i] = row
        for key, array in loaded.arrays.items():
            indices, arrays, digests = pending[key]
            indices.append(i)
            arrays.append(array)
            digests.append(loaded.digest)
            if len(indices) >= batch_size:
                run_batch(key)
        for key in loaded.shared:
            waiting[key][i] = loaded.digest
        if images is not None:
            images[i] = loaded.image
        bar.update(1)

    workers = options.decode_workers
    try:
        if workers == 0 or n <= 1:
            for i in range(n):
                consume(load(i))
        else:
            # A bounded window of decodes in flight: memory stays flat, the backbones never wait long.
            window = max(2 * batch_size, 4 * workers)
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phototag-decode") as pool:
                queue: deque[Future] = deque()
                next_index = 0
                while next_index < n or queue:
                    while next_index < n and len(queue) < window:
                        queue.append(pool.submit(load, next_index))
                        next_index += 1
                    consume(queue.popleft().result())
        for key in pending:
            run_batch(key)
        for key, photos in waiting.items():
            if photos:
                _fill_shared(by_key[key], shared[key], photos, items, features, unsaved[key], options)
    finally:
        # Keep whatever was computed, also when interrupted: the next run resumes from here.
        for key, rows in unsaved.items():
            by_key[key].cache.put(rows)
        bar.close()
    for store in stores:  # no photo reached this backbone: an empty block of its width
        if store.key not in features:
            columns = store.columns_in(shared[store.key]) if store.key in shared else None
            width = len(columns) if columns is not None else store.num_features
            features[store.key] = np.zeros((n, width), dtype=np.float32)
    ok_failures = [(items[i].name, failures[i]) for i in sorted(failures)]
    return Extraction(features=features, ok=ok, failures=ok_failures, images=images)


def _fill_shared(
    store: FeatureStore,
    parent: FeatureStore,
    photos: dict[int, str],
    items: Sequence[ImageItem],
    features: dict[str, np.ndarray],
    unsaved: dict[str, np.ndarray],
    options: RunOptions,
) -> None:
    """``store``'s features of ``photos`` (index -> digest) as columns of ``parent``'s, which are all in
    ``features`` by now; run on ``store``'s own backbone when ``parent``'s graph does not say which columns."""
    indices = np.fromiter(photos, dtype=np.int64, count=len(photos))
    columns = store.columns_in(parent)
    if columns is None:
        log.info(
            "Backbone %s: its graph does not name its parts; running %s on its own.",
            parent.spec.name,
            backbone_label(store.spec),
        )
        rows = extract_features([items[i] for i in indices], [store], options=options.replace(progress=False))
        block = rows.features[store.key]
    else:
        block = features[parent.key][indices][:, columns]
    if store.key not in features:
        features[store.key] = np.zeros((len(items), block.shape[1]), dtype=np.float32)
    features[store.key][indices] = block
    unsaved.update(zip(photos.values(), block, strict=True))

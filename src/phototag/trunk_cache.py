"""Fine-tuning that fits a CPU: a frozen backbone trunk, its activations cached once on disk, and a trainable tail.

When only the last blocks of a backbone learn (``cnn``'s fine-tune stage), everything before them computes the same
activations for a photo in every epoch. :func:`split_backbone` cuts the backbone into that frozen *trunk* and the
trainable *tail*; :class:`TrunkCache` stores the trunk's output for every training photo once, for a few fixed views
of it (the centre crop, its mirror image and optionally corner crops: the augmentation), and training then runs only
tail + head on those activations, an epoch costing a small fraction of a full forward and backward pass.

The cache is a folder per (backbone spec, trunk weights, cut point, views) under ``CACHE_DIR/trunk/``: a flat file of
fixed-size float32 rows read through a memory map (never loaded whole into memory) and a SQLite index from each
photo's content hash (SHA-1 of its bytes) to its row. Rows are appended in batches and indexed only once written, so
an interrupted fill keeps what it computed and the rerun resumes; bytes written but never indexed are cut off.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .backbone_spec import BackboneSpec
from .features import content_hash
from .fileio import atomic_write_text
from .images import ImageLoadError, decode_image, read_image_bytes
from .preprocess import normalize, resize_for

log = logging.getLogger(__name__)

#: Corner crops in the order ``crops=N`` takes them.
CORNERS = ("top_left", "bottom_right", "top_right", "bottom_left")
#: Child modules that hold a backbone's sequence of blocks (split into their elements).
_CONTAINERS = ("blocks", "stages", "layers", "features")


def view_names(flip: bool = True, crops: int = 0) -> list[str]:
    """The cached views of each photo: the centre crop, then ``crops`` corner crops, each followed by its mirror
    image when ``flip``.

    Example:
        >>> view_names(flip=True, crops=1)
        ['center', 'center_flip', 'top_left', 'top_left_flip']
    """
    if not 0 <= crops <= len(CORNERS):
        raise ValueError(f"crops must be between 0 and {len(CORNERS)}. Got {crops} instead.")
    names = []
    for base in ("center", *CORNERS[:crops]):
        names += [base, f"{base}_flip"] if flip else [base]
    return names


def photo_views(spec: BackboneSpec, image, views: Sequence[str]) -> np.ndarray:
    """A decoded RGB photo → ``(len(views), 3, S, S)`` float32 network inputs.

    ``center`` is exactly the backbone's own preprocessing (:func:`phototag.preprocess.preprocess`); a corner crop
    is the ``S`` × ``S`` corner of the photo prepared for a ``S / crop_pct`` input (so about 12 % larger); ``*_flip``
    mirrors a view left to right.
    """
    size = int(spec.input_size)
    center = normalize(np.asarray(resize_for(spec, image), dtype=np.uint8), spec)
    larger = None
    out = []
    for view in views:
        base = view.removesuffix("_flip")
        if base == "center":
            array = center
        elif base in CORNERS:
            if larger is None:
                big = int(round(size / (spec.crop_pct or 0.875)))
                larger = np.asarray(resize_for(dataclasses.replace(spec, input_size=big), image), dtype=np.uint8)
            top = 0 if base.startswith("top") else larger.shape[0] - size
            left = 0 if base.endswith("left") else larger.shape[1] - size
            array = normalize(np.ascontiguousarray(larger[top : top + size, left : left + size]), spec)
        else:
            raise ValueError(f"Unknown view {view!r}; expected one of {view_names(True, len(CORNERS))}.")
        out.append(array[:, :, ::-1] if view.endswith("_flip") else array)
    return np.ascontiguousarray(np.stack(out))


# --- cutting the backbone -------------------------------------------------------------------------------------------
def _steps(model: nn.Module) -> list[nn.Module]:
    """The model's children in forward order, block containers split into their blocks."""
    steps: list[nn.Module] = []
    for name, child in model.named_children():
        if name in _CONTAINERS and isinstance(child, nn.Sequential | nn.ModuleList):
            steps.extend(child)
        else:
            steps.append(child)
    return steps


def split_backbone(model: nn.Module, units: Sequence[nn.Module], n_tail: int, input_size: int):
    """Cut ``model`` (a timm feature extractor ending in global pooling) before its last ``n_tail`` units.

    Args:
        model: The backbone's timm model (``num_classes=0``: the forward pass returns pooled features).
        units: Its trainable units in order (:func:`phototag.methods.cnn.backbone_blocks`).
        n_tail: How many of the last units go to the tail; 0 puts the whole network, pooling included, in the trunk.
        input_size: Side of the square input, for the check below.

    Returns:
        ``(trunk, tail)``, two ``nn.Sequential`` sharing their modules with ``model`` (training the tail trains the
        model), with ``tail(trunk(x)) == model(x)``.

    Raises:
        ValueError: The model's forward pass is not its children run in order (checked on a random input), so it
            cannot be cut this way.
    """
    steps = _steps(model)
    if n_tail <= 0:
        cut = len(steps)
    else:
        first = units[len(units) - min(n_tail, len(units))]
        first = first[0] if isinstance(first, nn.ModuleList) else first
        cut = next((i for i, step in enumerate(steps) if step is first), None)
        if cut is None:
            raise ValueError(f"Cannot cut {type(model).__name__} before its last {n_tail} blocks: block not found.")
    trunk, tail = nn.Sequential(*steps[:cut]), nn.Sequential(*steps[cut:])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        probe = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
        probe = probe.to(next(model.parameters()).device)  # on CUDA when cnn moved the network there already
        whole, parts = model(probe), tail(trunk(probe))
    model.train(was_training)
    if whole.shape != parts.shape or not torch.allclose(whole, parts, rtol=1e-4, atol=1e-4):
        raise ValueError(
            f"Backbone {type(model).__name__} does not run its layers in sequence, so its frozen part cannot be "
            "cached; train it end to end with cached_trunk=false."
        )
    return trunk, tail


def trunk_fingerprint(trunk: nn.Module) -> str:
    """Short hash of the trunk's weights and buffers: cached activations are only valid for these exact weights."""
    digest = hashlib.sha1()
    for name, tensor in trunk.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


# --- the cache ------------------------------------------------------------------------------------------------------
@dataclass
class CachedActivations:
    """Rows of a :class:`TrunkCache` for a list of photos, aligned with them.

    Attributes:
        rows: ``(n,)`` int64 row of each photo in :attr:`TrunkCache.array`; -1 where the photo could not be read.
        failures: ``(path, reason)`` of each unreadable photo.
        computed: How many photos had their activations computed now (the rest were cached).
    """

    rows: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)
    computed: int = 0


class TrunkCache:
    """Trunk activations by photo content: ``(n_views, *shape)`` float32 per photo, on disk.

    Args:
        directory: The cache folder (created); one per trunk, cut point and view list (see :func:`cache_folder`).
        row_shape: Shape of one row, ``(n_views, C, h, w)`` or ``(n_views, d)``.
        meta: Saved as ``meta.json`` (what the activations are of); a folder whose meta differs is refused.
            ``None`` opens an existing folder whatever it holds, checking only the row shape.
    """

    def __init__(self, directory: str | os.PathLike, row_shape: Sequence[int], meta: dict[str, Any] | None = None):
        self.dir = Path(directory)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.row_bytes = int(np.prod(self.row_shape)) * 4
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_path = self.dir / "activations.f32"
        given = meta
        meta = {**(meta or {}), "row_shape": list(self.row_shape), "dtype": "float32"}
        meta_file = self.dir / "meta.json"
        if meta_file.exists():
            saved = json.loads(meta_file.read_text())
            expected = json.loads(json.dumps(meta))
            if saved != expected if given is not None else saved["row_shape"] != expected["row_shape"]:
                raise ValueError(f"Trunk cache {self.dir} holds other activations ({saved}); remove the folder.")
        else:
            atomic_write_text(meta_file, json.dumps(meta, indent=2))
        self._conn = sqlite3.connect(self.dir / "index.sqlite", timeout=60)
        self._conn.execute("CREATE TABLE IF NOT EXISTS rows (digest TEXT PRIMARY KEY, row INTEGER NOT NULL)")
        self._conn.commit()
        self._array: np.memmap | None = None

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    def close(self) -> None:
        self._array = None
        self._conn.close()

    def lookup(self, digests: Sequence[str]) -> np.ndarray:
        """Row of each digest, -1 where it is not cached."""
        found: dict[str, int] = {}
        unique = list(dict.fromkeys(digests))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self._conn.execute(f"SELECT digest, row FROM rows WHERE digest IN ({marks})", chunk))
        return np.array([found.get(d, -1) for d in digests], dtype=np.int64)

    def append(self, rows: dict[str, np.ndarray]) -> None:
        """Write new rows (digest → ``row_shape`` array) and index them; an interrupted call leaves no trace."""
        rows = {d: v for d, v in rows.items() if self.lookup([d])[0] < 0}
        if not rows:
            return
        with open(self.dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer at a time, also across processes
            try:
                n = len(self)
                with open(self.data_path, "ab") as data:
                    data.truncate(n * self.row_bytes)  # bytes of a fill that was interrupted before indexing
                    for vector in rows.values():
                        array = np.ascontiguousarray(vector, dtype=np.float32)
                        if array.shape != self.row_shape:
                            raise ValueError(f"Trunk cache row has shape {array.shape}, expected {self.row_shape}.")
                        data.write(array.tobytes())
                    data.flush()
                    os.fsync(data.fileno())
                self._conn.executemany("INSERT INTO rows VALUES (?, ?)", [(d, n + i) for i, d in enumerate(rows)])
                self._conn.commit()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._array = None

    @property
    def array(self) -> np.ndarray:
        """All indexed rows, ``(n_rows, *row_shape)``, memory-mapped read-only."""
        n = len(self)
        if self._array is None or self._array.shape[0] != n:
            if n == 0:
                return np.zeros((0, *self.row_shape), dtype=np.float32)
            self._array = np.memmap(self.data_path, dtype=np.float32, mode="r", shape=(n, *self.row_shape))
        return self._array


def cache_folder(root: str | os.PathLike, spec: BackboneSpec, fingerprint: str, n_tail: int, views: Sequence[str]):
    """``ROOT/trunk/<spec key>-<trunk weights>-tail<n>-<views hash>``: one folder per distinct set of activations."""
    view_key = hashlib.sha1(",".join(views).encode()).hexdigest()[:8]
    return Path(root) / "trunk" / f"{spec.cache_key()}-{fingerprint}-tail{n_tail}-{view_key}"


def fill_cache(
    cache: TrunkCache,
    paths: Sequence[str],
    trunk: nn.Module,
    spec: BackboneSpec,
    views: Sequence[str],
    *,
    device: torch.device,
    batch_size: int = 32,
    flush_every: int = 256,
    progress: bool = False,
) -> CachedActivations:
    """Compute and cache the trunk activations of every view of ``paths`` not cached yet.

    Photos are read and hashed first (cached ones are not decoded); unreadable ones are reported, not raised.
    The trunk runs in float32 in eval mode; rows are written every ``flush_every`` photos, so an interrupted fill
    resumes where it stopped.
    """
    from tqdm.auto import tqdm

    digests: list[str | None] = []
    failures: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            digests.append(content_hash(read_image_bytes(path)))
        except ImageLoadError as err:
            digests.append(None)
            failures[i] = err.reason
    known = cache.lookup([d or "" for d in digests])
    todo = [i for i, d in enumerate(digests) if d is not None and known[i] < 0]
    todo = list({digests[i]: i for i in reversed(todo)}.values())[::-1]  # each content once
    trunk = trunk.to(device).eval()
    unsaved: dict[str, np.ndarray] = {}
    batch: list[tuple[str, np.ndarray]] = []
    computed = 0

    def run() -> None:
        nonlocal computed
        if not batch:
            return
        inputs = torch.from_numpy(np.concatenate([v for _, v in batch])).to(device)
        with torch.inference_mode():
            out = trunk(inputs).float().cpu().numpy()
        out = out.reshape(len(batch), len(views), *out.shape[1:])
        unsaved.update((digest, row) for (digest, _), row in zip(batch, out, strict=True))
        computed += len(batch)
        batch.clear()

    try:
        per_batch = max(1, batch_size // len(views))
        for i in tqdm(todo, desc="caching activations", unit="img", disable=not progress, leave=False):
            try:
                image = decode_image(read_image_bytes(paths[i]), source=paths[i])
            except ImageLoadError as err:
                failures[i] = err.reason
                continue
            batch.append((digests[i], photo_views(spec, image, views)))
            if len(batch) >= per_batch:
                run()
            if len(unsaved) >= flush_every:
                cache.append(unsaved)
                unsaved = {}
        run()
    finally:
        cache.append(unsaved)  # keep what was computed, also when interrupted
    rows = cache.lookup([d or "" for d in digests])
    rows[list(failures)] = -1
    return CachedActivations(
        rows=rows, failures=[(str(paths[i]), failures[i]) for i in sorted(failures)], computed=computed
    )

"""Tagging and feature extraction on a Ray cluster (``--engine ray``): the same results as the local engine, past
one machine.

The work is one `Ray Data <https://docs.ray.io/en/latest/data/data.html>`_ pipeline, streamed with backpressure::

    photo paths ─► read + hash + decode + preprocess (CPU tasks) ─► one actor pool per backbone (ONNX Runtime
    session; a GPU share when the cluster has GPUs) ─► the model's numpy heads (an actor pool) ─► the driver

Decoding and preprocessing are exactly the local engine's (:func:`phototag.images.decode_image` with the same JPEG
draft, :func:`phototag.preprocess.preprocess`), and the backbones are the same ONNX graphs, so scores agree with
``--engine local`` (to float rounding). Every step is a pure function of its input rows, so Ray may rerun any of
them after losing a worker (tasks are retried, actors restarted) without changing or duplicating a result.

The model and the backbone graphs travel to the workers as *paths*: every node must see them at the same path (a
shared file system, or phototag and the model installed on each node; see ``docs/cluster.md``). Unreadable photos
are carried through the pipeline and reported by path, as locally.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import BackboneSpec
from .features import FeatureStore, embed_by_shape, shared_runs
from .images import DEFAULT_MAX_PIXELS
from .runtime import RunOptions, backbone_graph

log = logging.getLogger(__name__)

#: Photos per decode task (a Ray Data block) and per Parquet part of ``--out``.
DECODE_BATCH = 16
PART_SIZE = 10_000
#: Memory one decode task reserves on its node (bytes).
DECODE_MEMORY = 256 * 2**20


def require_ray():
    """Import Ray (Ray Data), or say which extra installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError('The ray engine needs Ray Data: pip install "phototag[ray]"') from None
    return ray


@dataclass
class ClusterOptions:
    """Where and how wide to run on Ray (settings of the cluster, never of a model).

    Attributes:
        address: Address of a running cluster (``HOST:PORT``, or ``"auto"``); ``None`` = ``$RAY_ADDRESS``, else a
            Ray instance started on this machine for the run.
        actors: Actors per backbone; ``None`` = autoscale from 1 up to what the cluster's CPUs (or GPUs) allow.
        cpus: CPUs each decode task and each actor reserves (an actor runs its ONNX session on that many threads).
        part_size: Photos per Parquet part of an ``out`` folder.
    """

    address: str | None = None
    actors: int | None = None
    cpus: float = 1.0
    part_size: int = PART_SIZE

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be an int >= 1 (actors per backbone). Got {self.actors!r} instead.")
        if not self.cpus > 0:
            raise ValueError(f"cpus must be > 0 (CPUs per Ray task or actor). Got {self.cpus!r} instead.")
        if self.part_size < 1:
            raise ValueError(f"part_size must be an int >= 1. Got {self.part_size!r} instead.")


class _Connection:
    """``with _Connection(address):`` joins (or starts) Ray; disconnects afterwards if it connected."""

    def __init__(self, cluster: ClusterOptions, progress: bool):
        self.cluster = cluster
        self.progress = progress
        self.connected_here = False

    def __enter__(self):
        ray = require_ray()
        if not ray.is_initialized():
            ray.init(address=self.cluster.address, log_to_driver=False, logging_level=logging.WARNING)
            self.connected_here = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = self.progress
        context.print_on_execution_start = False
        return ray

    def __exit__(self, *exc: Any) -> None:
        if self.connected_here:
            require_ray().shutdown()


# --- the pipeline's steps (run on the workers) --------------------------------------------------------------------
def _pixels(key: str) -> str:
    return f"pixels:{key}"


def _features(key: str) -> str:
    return f"features:{key}"


def _decode_batch(
    batch: dict[str, np.ndarray],
    *,
    specs: dict[str, BackboneSpec],
    max_pixels: int | None,
    stores: dict[str, str] | None = None,
    shared: dict[str, tuple[str, list[int]]] | None = None,
) -> dict[str, np.ndarray]:
    """Read, hash, decode (once, with the local engine's JPEG draft) and preprocess a batch of photos.

    Adds ``digest``, ``error`` ("" when the photo was read), ``need`` (False: every backbone's features are in the
    feature stores named by ``stores``, when this node sees them) and one ``pixels:<key>`` ``(n, 3, S, S)`` column
    per backbone that runs (zeros where there is nothing to compute); the ``shared`` ones (see
    :func:`_shared_columns`) take their features from another backbone's run and get no pixels.
    """
    from .features import ImageItem, _read, content_hash
    from .images import ImageLoadError, decode_image
    from .preprocess import draft_request, preprocess

    paths = [str(p) for p in batch["path"]]
    n = len(paths)
    digests, errors = [""] * n, [""] * n
    need = np.zeros(n, dtype=bool)
    pixels: dict[str, Any] = {}
    run = {key: spec for key, spec in specs.items() if key not in (shared or {})}
    for key, spec in run.items():
        size = int(spec.input_size)
        if spec.resize_mode == "full":  # whole photos differ in shape: one array per row (a ragged column)
            pixels[key] = np.empty(n, dtype=object)
            pixels[key][:] = [np.zeros((3, size, size), np.float32) for _ in range(n)]
        else:
            pixels[key] = np.zeros((n, 3, size, size), np.float32)
    known = _visible_stores(specs, stores)
    for i, path in enumerate(paths):
        try:
            data = _read(ImageItem.of(path))
            digests[i] = content_hash(data)
            if known and all(store.cache.get(digests[i]) is not None for store in known.values()):
                continue
            image = decode_image(
                data,
                source=path,
                max_pixels=max_pixels,
                draft=lambda w, h: draft_request(list(run.values()), w, h),
            )
            for key, spec in run.items():
                pixels[key][i] = preprocess(spec, image)
            need[i] = True
        except ImageLoadError as err:
            errors[i] = err.reason
    out = {"index": batch["index"], "path": np.array(paths), "digest": np.array(digests), "error": np.array(errors)}
    out["need"] = need
    out.update({_pixels(key): array for key, array in pixels.items()})
    return out


def _visible_stores(specs: dict[str, BackboneSpec], stores: dict[str, str] | None) -> dict[str, FeatureStore]:
    """The feature stores this node can read (a shared cache folder); none when one of them is not visible here."""
    if not stores:
        return {}
    found = {}
    for key, folder in stores.items():
        if not (Path(folder) / "features" / specs[key].cache_key() / "features.sqlite").is_file():
            return {}
        found[key] = FeatureStore(specs[key], folder)
    return found


def _shared_batch(batch: dict[str, np.ndarray], *, shared: dict[str, tuple[str, list[int]]]) -> dict[str, np.ndarray]:
    """``features:<key>`` of the shared backbones: columns of the features of the backbone whose run they share."""
    for key, (parent, columns) in shared.items():
        batch[_features(key)] = np.asarray(batch[_features(parent)])[:, columns]
    return batch


class _BackboneActor:
    """One backbone's ONNX Runtime session: ``pixels:<key>`` → ``features:<key>`` for the rows that need it."""

    def __init__(self, key: str, spec: BackboneSpec, graph: str, device: str, threads: int):
        from .runtime import OnnxBackbone

        self.key = key
        self.net = OnnxBackbone(spec, graph, RunOptions(device=device, threads=threads))
        size = int(spec.input_size)
        self.width = self.net.num_features or self.net(np.zeros((1, 3, size, size), np.float32)).shape[1]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop(_pixels(self.key))
        need = np.asarray(batch["need"], dtype=bool)
        features = np.zeros((len(need), self.width), np.float32)
        if need.any():
            features[need] = embed_by_shape(self.net, list(pixels[need]))
        batch[_features(self.key)] = features
        return batch


class _ScoringActor:
    """The model's heads (numpy): ``features:*`` columns → ``scores`` ``(n, n_tags)`` (zeros for unread photos)."""

    def __init__(self, model_path: str, keys: list[str], user_tags: list[str] | None, combiner: str | None):
        from .model import load_model

        self.model = load_model(model_path)
        if combiner is not None:  # an ensemble's combiner switched for this run (predict --combiner)
            self.model.method.set_combiner(combiner)
        self.keys = keys
        self.user_tags = user_tags

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        data_keys = self.model.data_keys
        inputs: dict[str, Any] = {}
        if "features" in data_keys:
            inputs["features"] = np.asarray(batch[_features("features")])[ok]
        if "backbone_features" in data_keys:
            inputs["backbone_features"] = {
                name: np.asarray(batch[_features(name)])[ok] for name in self.model.method.feature_backbones()
            }
        if "user_tags" in data_keys:
            inputs["user_tags"] = [list(self.user_tags or []) for _ in range(int(ok.sum()))]
        scores = np.zeros((len(ok), len(self.model.vocab)), np.float32)
        if ok.any():
            scores[ok] = self.model.score_inputs(inputs)
        return {"index": batch["index"], "path": batch["path"], "error": batch["error"], "scores": scores}


# --- building the pipeline (driver) -------------------------------------------------------------------------------
def _feature_pipeline(
    ray,
    paths: Sequence[tuple[int, str]],
    specs: dict[str, BackboneSpec],
    graphs: dict[str, str],
    options: RunOptions,
    cluster: ClusterOptions,
    *,
    stores: dict[str, str] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    extra_actors: int = 0,
    shared: dict[str, tuple[str, list[int]]] | None = None,
):
    """The Ray Dataset of ``(index, path)`` rows through decoding and every backbone's actor pool (``extra_actors``:
    actors the caller adds after it, counted when checking that fixed pools leave CPUs for decoding); ``shared``
    backbones (:func:`_shared_columns`) get no pool: their features are columns of another's."""
    shared = shared or {}
    run = {key: spec for key, spec in specs.items() if key not in shared}
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0)) if options.device != "cpu" else 0.0
    if cluster.actors and not gpus:
        # Fixed pools that take every CPU would leave none for decoding: the run would wait forever.
        needed = cluster.cpus * (cluster.actors * len(run) + extra_actors + 1 + bool(shared))
        have = float(resources.get("CPU", 0))
        if needed > have + 1e-9:
            raise ValueError(
                f"{cluster.actors} actor(s) for each of {len(run)} backbone(s) at {cluster.cpus:g} CPU each, plus "
                f"{extra_actors} scoring actor and one decode task{' and one column task' if shared else ''}, need "
                f"{needed:g} CPUs; the cluster has {have:g}. "
                "Lower --ray-actors or --ray-cpus, or add nodes."
            )
    dataset = ray.data.from_items(
        [{"index": i, "path": p} for i, p in paths], override_num_blocks=max(1, math.ceil(len(paths) / DECODE_BATCH))
    )
    dataset = dataset.map_batches(
        _decode_batch,
        batch_size=DECODE_BATCH,
        batch_format="numpy",
        fn_kwargs={"specs": specs, "max_pixels": max_pixels, "stores": stores, "shared": shared},
        num_cpus=cluster.cpus,  # pure and idempotent: Ray reruns it freely after a lost worker (task retries)
        # The memory a decode task holds (a decoded photo up to the pixel guard, its batch's pixels); reserving it
        # also keeps Ray Data from fusing decoding into the first backbone's actors, so decoding scales on its own.
        memory=DECODE_MEMORY,
    )
    threads = max(1, int(round(cluster.cpus)))
    for key, spec in run.items():
        if gpus:
            share = 1.0 / len(run)  # one set of backbones per GPU
            most = max(1, int(gpus))
        else:
            share = 0.0
            most = max(1, int(float(resources.get("CPU", 1)) / (cluster.cpus * (len(run) + 1))))
        size = {"size": cluster.actors} if cluster.actors else {"min_size": 1, "max_size": most}
        dataset = dataset.map_batches(
            _BackboneActor,
            batch_size=options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(**size),
            fn_constructor_kwargs={
                "key": key,
                "spec": spec,
                "graph": graphs[key],
                "device": "cuda" if gpus else "cpu",
                "threads": threads,
            },
            num_cpus=cluster.cpus,
            num_gpus=share or None,
        )
    if shared:
        # A light numpy task, with the same CPU share as decoding (Ray's default of one whole CPU would wait forever
        # on a node whose CPUs the actors already hold).
        dataset = dataset.map_batches(
            _shared_batch, batch_format="numpy", fn_kwargs={"shared": shared}, num_cpus=cluster.cpus
        )
    return dataset


def _shared_columns(stores: dict[str, FeatureStore]) -> dict[str, tuple[str, list[int]]]:
    """``{key: (key of the backbone whose run gives its features, their columns there)}`` for the stores whose
    features are columns of another's (:func:`phototag.features.shared_runs`; worked out on the driver)."""
    key_of = {store.key: key for key, store in stores.items()}
    out = {}
    for store_key, parent in shared_runs(list(stores.values())).items():
        columns = stores[key_of[store_key]].columns_in(parent)
        if columns is not None:
            out[key_of[store_key]] = (key_of[parent.key], [int(c) for c in columns])
    return out


def _graphs(
    stores: dict[str, FeatureStore], options: RunOptions, search: Sequence[Any], shared: dict[str, Any]
) -> dict[str, str]:
    """Absolute paths of the ONNX graph of every backbone that runs (found, or exported once, on the driver)."""
    return {
        key: str(backbone_graph(s.spec, options, search=search).resolve())
        for key, s in stores.items()
        if key not in shared
    }


def _scored_batches(
    model,
    items: Sequence[tuple[int, str]],
    options: RunOptions,
    cluster: ClusterOptions,
    *,
    user_tags: Sequence[str] | None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``index, path, error, scores`` for ``items`` (``(index, path)``), in no particular order."""
    if model.path is None:
        raise ValueError("The ray engine ships the model to the workers by its directory: save the model first.")
    if "images" in model.data_keys:
        raise ValueError(
            f"The ray engine scores models that read backbone features; this '{model.method.name}' model reads the "
            "pictures themselves. Use --engine local."
        )
    stores = model.stores(options.replace(cache_dir=False), memory=False)
    specs = {key: store.spec for key, store in stores.items()}
    shared = _shared_columns(stores)
    graphs = _graphs(stores, options, model.graph_folders(), shared)
    with _Connection(cluster, options.progress) as ray:
        dataset = _feature_pipeline(ray, items, specs, graphs, options, cluster, extra_actors=1, shared=shared)
        dataset = dataset.map_batches(
            _ScoringActor,
            batch_size=options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=1),
            fn_constructor_kwargs={
                "model_path": str(Path(model.path).resolve()),
                "keys": list(specs),
                "user_tags": None if user_tags is None else list(user_tags),
                "combiner": model.method.config.combiner if hasattr(model.method, "set_combiner") else None,
            },
            num_cpus=cluster.cpus,
        )
        yield from dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)


# --- tagging ------------------------------------------------------------------------------------------------------
def model_id(model) -> str:
    """A short identity of a saved model: its method and a digest of its files (what a Parquet row was scored by)."""
    digest = hashlib.sha1()
    for name in ("phototag_model.json", "vocab.json", "weights.safetensors"):
        file = Path(model.path) / name
        if file.is_file():
            digest.update(file.read_bytes())
    return f"{model.method.name}-{digest.hexdigest()[:12]}"


def predict_on_ray(
    model,
    paths: Sequence[str | os.PathLike],
    *,
    top_k: int | None = None,
    threshold: float | None = None,
    balanced: bool | None = None,
    user_tags: Sequence[str] | None = None,
    options: RunOptions | None = None,
    cluster: ClusterOptions | None = None,
    out: str | os.PathLike | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Tags for image files computed on a Ray cluster; the same as :meth:`phototag.model.TagModel.predict`.

    Args:
        model: A saved :class:`~phototag.model.TagModel` (the workers load it from its directory).
        paths: Image files, as every node sees them.
        top_k, threshold, balanced: The decision rule, as in :meth:`~phototag.model.TagModel.predict`.
        user_tags: The user's own tags, the same for every photo (contextual models).
        options: Batch size, device, progress (each actor's threads follow ``cluster.cpus``).
        cluster: The Ray cluster and how wide to run on it.
        out: A folder to write Parquet parts to instead of returning predictions (see :func:`write_parts`).

    Returns:
        ``(predictions, failures)`` as :meth:`~phototag.model.TagModel.predict` returns them (predictions empty
        when writing to ``out``; failures then include those of parts finished by an earlier run).
    """
    require_ray()
    options = options or RunOptions()
    cluster = cluster or ClusterOptions()
    model.rank_offset(balanced)  # a bad balanced=True fails before any work
    names = [str(p) for p in paths]
    if out is not None:
        rule = {"top_k": top_k, "threshold": threshold, "balanced": balanced}
        return [], write_parts(model, names, out, rule=rule, user_tags=user_tags, options=options, cluster=cluster)
    scores = np.zeros((len(names), len(model.vocab)), np.float32)
    errors = [""] * len(names)
    for batch in _scored_batches(model, list(enumerate(names)), options, cluster, user_tags=user_tags):
        index = np.asarray(batch["index"], dtype=np.int64)
        scores[index] = batch["scores"]
        for i, error in zip(index, batch["error"], strict=True):
            errors[int(i)] = str(error)
    ok = np.array([not e for e in errors], dtype=bool)
    predictions = model.format_predictions(
        [n for n, good in zip(names, ok, strict=True) if good],
        scores[ok],
        top_k=top_k,
        threshold=threshold,
        balanced=balanced,
    )
    return predictions, [(n, e) for n, e in zip(names, errors, strict=True) if e]


def write_parts(
    model,
    names: Sequence[str],
    out: str | os.PathLike,
    *,
    rule: dict[str, Any],
    user_tags: Sequence[str] | None,
    options: RunOptions,
    cluster: ClusterOptions,
) -> list[tuple[str, str]]:
    """Tag ``names`` into Parquet parts ``OUT/part-NNNNN.parquet`` (columns ``image, tags, scores, model, error``),
    part ``k`` holding photos ``k*part_size ...`` in input order.

    Each part is written atomically as soon as all its photos are scored, and parts already in ``out`` (from an
    interrupted run with the same photos, model and rule: ``OUT/_run.json``) are not computed again.

    Returns:
        ``(path, reason)`` of every unreadable photo, in input order (also those of earlier runs' parts).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .fileio import atomic_write_text

    out = Path(out)
    manifest = {
        "model": model_id(model),
        "n_images": len(names),
        "images_sha1": hashlib.sha1("\n".join(names).encode()).hexdigest(),
        "part_size": cluster.part_size,
        "rule": rule,
        "user_tags": None if user_tags is None else list(user_tags),
    }
    run_file = out / "_run.json"  # "_": Parquet readers skip it, so OUT reads as one dataset
    if run_file.is_file():
        previous = json.loads(run_file.read_text())
        if previous != manifest:
            raise ValueError(
                f"'{out}' holds the parts of a different run (other photos, model, rule or part size); give another "
                "--out folder, or delete it to start again."
            )
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"'{out}' is not empty and holds no phototag run (_run.json); give an empty or new folder.")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_file, json.dumps(manifest, indent=2))
    size = cluster.part_size
    n_parts = math.ceil(len(names) / size)
    part_file = [out / f"part-{k:05d}.parquet" for k in range(n_parts)]
    todo = [k for k in range(n_parts) if not part_file[k].is_file()]
    if len(todo) < n_parts:
        log.info("Resuming: %d of %d parts are already written in %s.", n_parts - len(todo), n_parts, out)
    identity = manifest["model"]

    def write(k: int, rows: dict[int, tuple[str, np.ndarray]]) -> None:
        indices = range(k * size, min(len(names), (k + 1) * size))
        errors = [rows[i][0] for i in indices]
        good = [i for i in indices if not rows[i][0]]
        chosen = iter(
            model.format_predictions(
                [names[i] for i in good],
                np.stack([rows[i][1] for i in good]) if good else np.zeros((0, len(model.vocab)), np.float32),
                **rule,
            )
        )
        tags, scores = [], []
        for error in errors:
            picks = [] if error else next(chosen)["tags"]
            tags.append([t["tag"] for t in picks])
            scores.append([float(t["score"]) for t in picks])
        table = pa.table(
            {
                "image": [names[i] for i in indices],
                "tags": pa.array(tags, pa.list_(pa.string())),
                "scores": pa.array(scores, pa.list_(pa.float32())),
                "model": [identity] * len(errors),
                "error": [e or None for e in errors],
            }
        )
        staged = part_file[k].with_name(f".{part_file[k].name}.tmp")
        pq.write_table(table, staged)
        os.replace(staged, part_file[k])

    if todo:
        items = [(i, names[i]) for k in todo for i in range(k * size, min(len(names), (k + 1) * size))]
        pending: dict[int, dict[int, tuple[str, np.ndarray]]] = {k: {} for k in todo}
        for batch in _scored_batches(model, items, options, cluster, user_tags=user_tags):
            for i, error, row in zip(batch["index"], batch["error"], batch["scores"], strict=True):
                k = int(i) // size
                pending[k][int(i)] = (str(error), np.asarray(row))
                if len(pending[k]) == min(len(names), (k + 1) * size) - k * size:
                    write(k, pending.pop(k))
        if pending:  # never expected: Ray returns every row or raises
            raise RuntimeError(f"The cluster returned no result for some photos of parts {sorted(pending)}; rerun.")
    failures = []
    for file in part_file:
        table = pq.read_table(file, columns=["image", "error"]).to_pydict()
        failures += [(n, e) for n, e in zip(table["image"], table["error"], strict=True) if e]
    return failures


# --- feature extraction -------------------------------------------------------------------------------------------
@dataclass
class FeatureReport:
    """What :func:`extract_features_on_ray` did.

    Attributes:
        computed: Photos whose features were computed and stored, per store key.
        already: Photos whose features every store already held (seen by the workers: a shared cache).
        failures: ``(path, reason)`` of unreadable photos, in input order.
    """

    computed: int = 0
    already: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def extract_features_on_ray(
    paths: Sequence[str | os.PathLike],
    stores: Sequence[FeatureStore],
    *,
    options: RunOptions | None = None,
    cluster: ClusterOptions | None = None,
) -> FeatureReport:
    """Fill ``stores`` (content-keyed feature caches, :class:`~phototag.features.FeatureStore`) with the features of
    ``paths``, computed on a Ray cluster; the driver writes them batch by batch, so an interrupted run keeps what
    arrived, and photos whose features the stores hold are skipped when the workers see the cache folder.

    Training on the same photos then reads every feature from the stores and runs no backbone.
    """
    require_ray()
    options = options or RunOptions()
    cluster = cluster or ClusterOptions()
    by_key = {store.key: store for store in stores}
    specs = {key: store.spec for key, store in by_key.items()}
    roots = {key: str(store.dir.parent.parent) for key, store in by_key.items() if store.dir is not None}
    shared = _shared_columns(by_key)
    graphs = _graphs(by_key, options, [f for store in stores for f in store.search], shared)
    max_pixels = min((s.max_pixels for s in stores if s.max_pixels is not None), default=DEFAULT_MAX_PIXELS)
    names = [str(p) for p in paths]
    report = FeatureReport()
    errors: dict[int, str] = {}
    with _Connection(cluster, options.progress) as ray:
        dataset = _feature_pipeline(
            ray,
            list(enumerate(names)),
            specs,
            graphs,
            options,
            cluster,
            stores=roots,
            max_pixels=max_pixels,
            shared=shared,
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            need = np.asarray(batch["need"], dtype=bool)
            for i, error in zip(batch["index"], batch["error"], strict=True):
                if error:
                    errors[int(i)] = str(error)
            report.already += int(sum(1 for e, n in zip(batch["error"], need, strict=True) if not e and not n))
            digests = [str(d) for d in batch["digest"]]
            for key, store in by_key.items():
                features = batch[_features(key)]
                store.cache.put({digests[j]: features[j] for j in np.flatnonzero(need)})
            report.computed += int(need.sum())
    report.failures = [(names[i], errors[i]) for i in sorted(errors)]
    return report

"""The tagging service behind ``phototag serve``: an HTTP API and a web page over one :class:`TagModel`.

Endpoints (FastAPI; OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

- ``POST /v1/tag`` — multipart ``files`` (one or more images) and optional ``user_tags`` (one value for all images or
  one per image, space-separated), query ``top_k`` / ``threshold`` → a JSON array with one object per image,
  exactly the shape of ``phototag predict --format jsonl``: ``{"image": name, "tags": [{"tag", "score"}, ...]}``.
- ``GET /v1/tags`` — the vocabulary; ``GET /healthz`` — liveness, model and batching counters (never needs a token).
- ``POST /v1/feedback/images`` (multipart ``file``) and ``POST /v1/feedback`` (JSON ``image_id``, ``tag``,
  ``decision``) — the web page's accept / reject clicks, stored by :mod:`phototag.feedback`.
- ``GET /`` — the web page (static files in ``phototag/web/``).

Concurrent requests are scored together: each request's decoded images go to a :class:`MicroBatcher`, which runs
one model call per batch on a worker thread, so N queued single-photo requests become one model call (a GPU's
throughput comes from such batches; on a CPU it mainly keeps queued requests served in arrival order).
Errors are JSON ``{"error": code, "detail": message}`` with a 4xx status; a bearer token, when set, guards the API
(``/v1/...``); the page shell, ``/docs`` and ``/healthz`` hold no data and stay open so a browser can load them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the model pulls in torch; the CLI imports this module only for its defaults
    from .model import TagModel

log = logging.getLogger(__name__)

TOKEN_ENV = "PHOTOTAG_TOKEN"
WEB_DIR = Path(__file__).resolve().parent / "web"

#: Content types accepted for uploads; anything else is refused with 415 before decoding.
IMAGE_CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff", "image/x-ms-bmp"}
)


@dataclass
class ServiceConfig:
    """Limits and switches of the service (``phototag serve`` flags fill it in)."""

    max_file_bytes: int = 20 * 1024 * 1024  # largest accepted upload per image (413 above)
    max_request_bytes: int = 64 * 1024 * 1024  # largest request body (413 from Content-Length, before reading it)
    max_files: int = 16  # most images per POST /v1/tag request (413 above)
    max_pixels: int = 40_000_000  # decompression-bomb guard: width x height per image (413 above)
    max_batch: int = 16  # most images scored in one model call
    max_wait_ms: float = 5.0  # how long the batcher waits for more requests once one is queued
    token: str | None = None  # bearer token for /v1/...; None = open
    feedback_db: str | os.PathLike | None = None  # SQLite file for the web page's feedback; None = feedback off
    model_name: str = "model"  # shown by /healthz, stored with each click; "model" = method@directory of the model
    rules: Any = None  # a phototag.rules.Rules applied to every /v1/tag answer; None = no rules
    lang: str = "en"  # keyword language of /v1/tag answers when the request gives no ?lang=


class ServiceError(Exception):
    """A client error: becomes ``{"error": code, "detail": message}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


# --- scoring ----------------------------------------------------------------------------------------------------
@dataclass
class DecodedImage:
    """An upload that decoded: its name, bytes and RGB picture."""

    name: str
    data: bytes
    image: Any  # PIL.Image.Image in RGB
    user_tags: list[str] = field(default_factory=list)


def make_scorer(model: TagModel) -> Callable[[Sequence[DecodedImage]], np.ndarray]:
    """A function scoring decoded uploads with ``model`` through the method interface: ``(n, n_tags)`` scores.

    Builds exactly the inputs the method declares: ``"features"`` from the decoded pictures (the same backbone
    preprocessing as ``predict``, no cache), ``"images"`` as temporary files of the uploaded bytes (features the
    method extracts from them are not cached either),
    ``"user_tags"`` from the request.
    """
    keys = model.data_keys
    store = model.feature_store(False) if "features" in keys else None
    if "images" in keys:
        # Methods that extract features from the files themselves (an ensemble's members) keep none of an upload's:
        # neither on disk nor in memory, so a long-running server neither fills the cache nor grows.
        model.method.use_feature_cache(False, memory=False)

    def score(items: Sequence[DecodedImage]) -> np.ndarray:
        inputs: dict[str, Any] = {}
        if store is not None:
            inputs["features"] = store.embed_images([item.image for item in items])
        if "user_tags" in keys:
            inputs["user_tags"] = [list(item.user_tags) for item in items]
        if "images" not in keys:
            return model.score_inputs(inputs)
        with tempfile.TemporaryDirectory(prefix="phototag-serve-") as tmp:
            paths = []
            for i, item in enumerate(items):
                path = Path(tmp) / f"{i:04d}{Path(item.name).suffix or '.img'}"
                path.write_bytes(item.data)
                paths.append(str(path))
            inputs["images"] = paths
            return model.score_inputs(inputs)

    return score


class MicroBatcher:
    """Collects concurrent scoring requests into batches and runs them one batch at a time on a worker thread.

    Once a request is queued, the batcher waits at most ``max_wait_ms`` for more (or until ``max_batch`` images),
    then scores them in one call. While a batch runs, new requests queue up and form the next batch, so under load
    the batch size grows by itself.

    Args:
        score: Scores a list of items: ``(n_items, n_tags)``.
        max_batch: Most items per call (a request larger than this is one batch of its own).
        max_wait_ms: Extra wait for company once the first request of a batch has arrived.
    """

    def __init__(self, score: Callable[[Sequence[Any]], np.ndarray], *, max_batch: int = 16, max_wait_ms: float = 5.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1. Got {max_batch} instead.")
        self.score = score
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.batches = 0
        self.items = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phototag-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="phototag-batcher")

    async def submit(self, items: Sequence[Any]) -> np.ndarray:
        """Score ``items`` (with whatever else is queued); returns their ``(len(items), n_tags)`` rows."""
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("The batcher is not running (server starting up or shutting down).")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((list(items), future))
        return await future

    async def close(self) -> None:
        """Finish every queued request, then stop (graceful shutdown)."""
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        held = None  # a request that would have overflowed the previous batch: it starts the next one
        stopping = False
        while not stopping:
            first = held if held is not None else await self._queue.get()
            held = None
            if first is None:
                break
            batch = [first]
            size = len(first[0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                try:
                    if self._queue.empty():
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        nxt = await asyncio.wait_for(self._queue.get(), remaining)
                    else:
                        nxt = self._queue.get_nowait()
                except TimeoutError:
                    break
                if nxt is None:
                    stopping = True
                    break
                if size + len(nxt[0]) > self.max_batch:
                    held = nxt
                    break
                batch.append(nxt)
                size += len(nxt[0])
            await self._score_batch(loop, batch)
        # Requests queued behind the stop marker still get their answer.
        rest = [held] if held is not None else []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                rest.append(item)
        for start in range(0, len(rest), self.max_batch):
            await self._score_batch(loop, rest[start : start + self.max_batch])

    async def _score_batch(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        items = [item for request, _ in batch for item in request]
        try:
            scores = await loop.run_in_executor(self._executor, self.score, items)
        except Exception as err:  # every waiting request gets the error, the batcher keeps running
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        self.batches += 1
        self.items += len(items)
        start = 0
        for request, future in batch:
            if not future.done():
                future.set_result(scores[start : start + len(request)])
            start += len(request)


# --- the app ----------------------------------------------------------------------------------------------------
def model_label(model: TagModel) -> str:
    """A short identity of a model: its method and directory name (``mlp@default_model``)."""
    where = model.path.name if model.path is not None else "in-memory"
    return f"{model.method.name}@{where}"


def create_app(model: TagModel, config: ServiceConfig | None = None, **overrides: Any):
    """The FastAPI application serving ``model``.

    Args:
        model: A loaded :class:`TagModel` (e.g. ``load_model(None)``, the shipped default).
        config: Limits and switches; ``overrides`` replace single fields (``None`` values are ignored).

    Returns:
        A ``fastapi.FastAPI`` app; run it with uvicorn (see :func:`serve`).

    Raises:
        ImportError: FastAPI is not installed (``pip install "phototag[serve]"``).
    """
    try:
        from .service_app import build_app
    except ImportError as err:
        raise ImportError(
            f'phototag serve needs FastAPI ({err.name} is missing): pip install "phototag[serve]"'
        ) from None

    config = replace(config) if config is not None else ServiceConfig()
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"Unknown service setting {key!r}; valid: {sorted(vars(ServiceConfig()))}.")
        if value is not None:
            setattr(config, key, value)
    if config.token is None and os.environ.get(TOKEN_ENV):
        config.token = os.environ[TOKEN_ENV]
    if config.model_name == "model":
        config.model_name = model_label(model)
    return build_app(model, config)


# --- running ----------------------------------------------------------------------------------------------------
def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port=0`` picks a free one; read it back with ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"Cannot listen on {host}:{port} ({err.strerror or err}); choose another --port.") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app, sock: socket.socket, *, graceful_timeout: float = 10.0, log_level: str = "warning"):
    """A uvicorn server for ``app`` on an already bound socket (run it with ``server.run(sockets=[sock])``).

    SIGINT / SIGTERM stop it gracefully: no new connections, in-flight requests finish (at most
    ``graceful_timeout`` seconds), queued batches are scored, then the feedback database is closed.
    """
    try:
        import uvicorn
    except ImportError:
        raise ImportError('phototag serve needs uvicorn: pip install "phototag[serve]"') from None
    config = uvicorn.Config(
        app,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout,
        access_log=False,
        lifespan="on",
    )
    return uvicorn.Server(config)


def serve(
    model: TagModel,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServiceConfig | None = None,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``model`` until SIGINT / SIGTERM (blocking).

    The socket is bound before the model server starts, so ``port=0`` works and ``on_ready(url)`` gets the actual
    address (connections made before start-up finishes wait in the listen backlog).
    """
    app = create_app(model, config)
    sock = bind_socket(host, port)
    shown = f"[{host}]" if ":" in host else host
    if on_ready is not None:
        on_ready(f"http://{shown}:{sock.getsockname()[1]}")
    try:
        make_server(app, sock, log_level=log_level).run(sockets=[sock])
    finally:
        sock.close()

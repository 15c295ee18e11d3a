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

Hardening (docs/security.md has the threat model): in a request of several images, a file that cannot be read or
scored fails only its own entry (``{"image", "error", "detail"}``); large photos are decoded at a reduced size (the
model looks at about 300 pixels) under a pixel budget shared by all requests, and a request's total pixels are
limited; a full queue answers 503 with ``Retry-After``; slow clients are cut off (header and body deadlines); a
token-less server answers only for its allowed host names and refuses cross-origin writes.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import socket
import sys
import time
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the CLI imports this module only for its defaults; the model is loaded when serving
    from .model import TagModel
    from .runtime import RunOptions

log = logging.getLogger(__name__)

TOKEN_ENV = "PHOTOTAG_TOKEN"
WEB_DIR = Path(__file__).resolve().parent / "web"

#: Content types accepted for uploads; anything else is refused with 415 before decoding.
IMAGE_CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff", "image/x-ms-bmp"}
)


#: Host names a token-less server answers to when listening on a loopback address (DNS-rebinding guard).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServiceConfig:
    """Limits and switches of the service (``phototag serve`` flags fill it in)."""

    max_file_bytes: int = 20 * 1024 * 1024  # largest accepted upload per image (413 above)
    max_request_bytes: int = 64 * 1024 * 1024  # largest request body (413 from Content-Length, before reading it)
    max_files: int = 16  # most images per POST /v1/tag request (413 above)
    max_pixels: int = 40_000_000  # decompression-bomb guard: width x height per image (that entry fails, 413)
    max_request_pixels: int = 120_000_000  # sum of width x height over a request's images (413 above)
    decode_pixels: int = 50_000_000  # pixels being decoded at once, all requests together (memory budget)
    decode_side: int = 768  # larger photos are decoded and kept at this shorter side (the model looks at ~300 px)
    max_batch: int = 16  # most images scored in one model call
    max_wait_ms: float = 5.0  # how long the batcher waits for more requests once one is queued
    max_queue: int = 32  # most requests waiting for the model; more get 503 with Retry-After
    body_timeout_s: float = 60.0  # a request body must arrive within this (408 after)
    header_timeout_s: float = 10.0  # request headers must arrive within this (connection closed after)
    keep_alive_s: float = 5.0  # idle keep-alive connections are closed after this
    max_connections: int = 100  # open connections at once; more get 503 from uvicorn
    token: str | None = None  # bearer token for /v1/...; None = open
    allowed_hosts: tuple[str, ...] | None = None  # Host header values answered; None = loopback names (no token)
    cors_origins: tuple[str, ...] = ()  # web origins allowed to call the API from a browser (needs the token)
    listen_host: str | None = None  # the address served on (set by serve); answered as a host name too
    feedback_db: str | os.PathLike | None = None  # SQLite file for the web page's feedback; None = feedback off
    model_name: str = "model"  # shown by /healthz, stored with each click; "model" = method@directory of the model
    run_options: Any = None  # phototag.runtime.RunOptions for the backbones (device, precision); None = defaults
    rules: Any = None  # a phototag.rules.Rules applied to every /v1/tag answer; None = no rules
    lang: str = "en"  # keyword language of /v1/tag answers when the request gives no ?lang=


class QueueFullError(Exception):
    """The batcher already holds ``max_queue`` requests; ``retry_after`` is a guess in seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the model queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class ServiceError(Exception):
    """A client error: becomes ``{"error": code, "detail": message}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


# --- scoring ----------------------------------------------------------------------------------------------------
@dataclass
class DecodedImage:
    """An upload that decoded: its name and its RGB picture, reduced to what the model needs (see
    :func:`decode_reduced`), so neither the queue nor the model worker holds full-size pixels."""

    name: str
    data: bytes  # the encoded upload; the service leaves it empty once decoded (the model reads ``image``)
    image: Any  # PIL.Image.Image in RGB
    user_tags: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)  # width, height of the uploaded photo (before any reduction)


def clean_upload_name(name: str | None, *, limit: int = 200) -> str:
    """The name an upload is reported under: no folders, no control characters, at most ``limit`` characters.

    A long extension is dropped rather than cut (``photo.<300 x>`` becomes ``photo``), so a name can never make a
    file name or path the server cannot write.
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    stem, dot, suffix = base.rpartition(".")
    if dot and (len(suffix) > 10 or not suffix.isalnum()):
        base = stem
    if len(base) > limit:
        stem, dot, suffix = base.rpartition(".")
        base = f"{stem[: limit - len(suffix) - 1]}.{suffix}" if dot and stem else base[:limit]
    return base or "upload"


def image_size(data: bytes, source: str):
    """``(width, height)`` from the file's header, without decoding the pixels.

    Raises:
        ImageLoadError: Empty, or not an image PIL can read.
    """
    from PIL import Image, UnidentifiedImageError

    from .images import ImageLoadError

    if not data:
        raise ImageLoadError(source, "file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except UnidentifiedImageError:
        raise ImageLoadError(source, "not an image file PIL can read") from None
    except Image.DecompressionBombError:
        raise ImageLoadError(source, "refused as a possible decompression bomb") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(source, f"corrupt or truncated image ({err})") from None


def decode_reduced(
    data: bytes,
    *,
    source: str,
    max_pixels: int,
    side: int,
    draft: Callable[[int, int], tuple[int, int] | None] | None = None,
):
    """Decode an upload to an RGB picture no larger than the model needs; the full-size pixels are dropped at once.

    A JPEG is decoded reduced by ``draft`` (the model's rule, ``phototag.preprocess.draft_request``: DCT scaling
    to the smallest size that still covers its backbones' input, exactly as ``phototag predict`` decodes it). A
    picture still larger than ``side`` on its shorter side (other formats, or a model without backbones) is then
    reduced to ``side`` (Lanczos), so the queue never holds full-size photos.

    Raises:
        ImageLoadError: Not an image, truncated, over ``max_pixels`` or otherwise undecodable.
    """
    from PIL import Image

    from .images import ImageLoadError, decode_image

    width, height = image_size(data, source)
    if width * height > max_pixels:
        raise ImageLoadError(
            source, f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
        )
    image = decode_image(data, source=source, max_pixels=max_pixels, draft=draft)
    short = min(image.size)
    if short > side:
        factor = short / side
        size = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


class PixelBudget:
    """How many pixels may be decoded at once, shared by all requests (the decoder's memory budget).

    ``acquire(n)`` waits until ``n`` more pixels fit; an image larger than the whole budget waits until nothing
    else is being decoded, so it still runs, alone.
    """

    def __init__(self, pixels: int):
        self.pixels = pixels
        self.used = 0
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self, n: int) -> None:
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: self.used == 0 or self.used + n <= self.pixels)
            self.used += n

    async def release(self, n: int) -> None:
        changed = self._condition()
        async with changed:
            self.used -= n
            changed.notify_all()


def make_scorer(model: TagModel, options: RunOptions | None = None) -> Callable[[Sequence[DecodedImage]], np.ndarray]:
    """A function scoring decoded uploads with ``model`` through the method interface: ``(n, n_tags)`` scores.

    The uploads were decoded once when they arrived; the model builds exactly the inputs its method declares from
    those pictures (the same preprocessing as ``predict``) and the request's user tags. Nothing is cached: neither
    on disk nor in memory, so a long-running server neither fills the cache nor grows.
    """

    def score(items: Sequence[DecodedImage]) -> np.ndarray:
        return model.score_pictures(
            [item.image for item in items], user_tags=[list(item.user_tags) for item in items], options=options
        )

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

    def __init__(
        self,
        score: Callable[[Sequence[Any]], np.ndarray],
        *,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1. Got {max_batch} instead.")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be >= 1. Got {max_queue} instead.")
        self.score = score
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.batches = 0
        self.items = 0
        self.pending = 0  # requests submitted and not yet answered
        self.refused = 0  # requests refused because the queue was full
        self._seconds_per_item = 0.05  # running estimate, for Retry-After
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phototag-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="phototag-batcher")

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about the time to score what is queued (1 to 60)."""
        return int(min(60, max(1, math.ceil(self.pending * self.max_batch * self._seconds_per_item))))

    def check_room(self) -> None:
        """Raise :class:`QueueFullError` when ``max_queue`` requests are already waiting."""
        if self.max_queue is not None and self.pending >= self.max_queue:
            self.refused += 1
            raise QueueFullError(self.retry_after())

    async def submit(self, items: Sequence[Any]) -> np.ndarray:
        """Score ``items`` (with whatever else is queued); returns their ``(len(items), n_tags)`` rows.

        Raises:
            QueueFullError: ``max_queue`` requests are already waiting.
            Exception: Whatever scoring this request alone raised (other requests of its batch are unaffected).
        """
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("The batcher is not running (server starting up or shutting down).")
        self.check_room()
        future = asyncio.get_running_loop().create_future()
        self.pending += 1
        try:
            self._queue.put_nowait((list(items), future))
            return await future
        finally:
            self.pending -= 1

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
        started = time.monotonic()
        try:
            scores = await loop.run_in_executor(self._executor, self.score, items)
        except Exception as err:
            if len(batch) > 1:
                # One request's bad input must not fail the others: score each request of the batch alone.
                for one in batch:
                    await self._score_batch(loop, [one])
                return
            _, future = batch[0]
            if not future.done():
                future.set_exception(err)
            return
        elapsed = time.monotonic() - started
        self._seconds_per_item = 0.8 * self._seconds_per_item + 0.2 * elapsed / max(1, len(items))
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
    if config.token is not None and not config.token.strip():
        raise ValueError("The service token is empty; give a non-empty token (or none for an open server).")
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


def make_server(
    app,
    sock: socket.socket,
    *,
    graceful_timeout: float = 10.0,
    log_level: str = "warning",
    config: ServiceConfig | None = None,
):
    """A uvicorn server for ``app`` on an already bound socket (run it with ``server.run(sockets=[sock])``).

    SIGINT / SIGTERM stop it gracefully: no new connections, in-flight requests finish (at most
    ``graceful_timeout`` seconds), queued batches are scored, then the feedback database is closed.
    Slow clients are cut off: headers must arrive within ``header_timeout_s`` of connecting (or of the previous
    response), idle keep-alive connections close after ``keep_alive_s``, and at most ``max_connections`` are open
    (uvicorn answers 503 beyond). ``config`` defaults to the app's own (``app.state.config``).
    """
    try:
        import uvicorn
    except ImportError:
        raise ImportError('phototag serve needs uvicorn: pip install "phototag[serve]"') from None
    if config is None:
        config = getattr(getattr(app, "state", None), "config", None) or ServiceConfig()
    server_config = uvicorn.Config(
        app,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout,
        access_log=False,
        lifespan="on",
        http=_header_deadline_protocol(config.header_timeout_s),
        timeout_keep_alive=max(1, math.ceil(config.keep_alive_s)),
        limit_concurrency=config.max_connections,
        h11_max_incomplete_event_size=32 * 1024,  # request line + headers
    )
    return uvicorn.Server(server_config)


def _header_deadline_protocol(seconds: float):
    """uvicorn's h11 protocol, closing a connection whose request headers take longer than ``seconds``.

    uvicorn has no such deadline (its keep-alive timer stops at the first byte), so a client sending a header a byte
    at a time would hold a connection for ever.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self, delay: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(delay, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            # IDLE = still waiting for (the rest of) a request's headers.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm(seconds)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the headers are in; the app's body deadline takes over

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm(self.timeout_keep_alive + seconds)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


def read_token_file(path: str | os.PathLike) -> str:
    """The token stored in ``path`` (first line, surrounding spaces removed).

    Raises:
        ValueError: The file is missing, unreadable or empty (the message names it).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ValueError(f"Cannot read the token file '{path}' ({reason}); give a readable file.") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ValueError(f"The token file '{path}' is empty; write the token on its first line.")
    return token


def allowed_host_names(config: ServiceConfig) -> tuple[str, ...] | None:
    """Host header names the app answers to; ``None`` = any (a server with a token and no ``allowed_hosts``).

    A token-less server answers only to loopback names and the address it listens on (when not a wildcard), so a
    web page elsewhere cannot reach it through DNS rebinding.
    """
    if config.allowed_hosts is not None:
        return tuple(h.lower().strip("[]") for h in config.allowed_hosts)
    if config.token is not None:
        return None
    names = list(LOOPBACK_HOSTS)
    if config.listen_host and config.listen_host not in ("0.0.0.0", "::", ""):
        names.append(config.listen_host.lower().strip("[]"))
    return tuple(names)


def limit_heap_growth() -> bool:
    """Make glibc return large freed blocks to the system at once (a fixed 4 MB mmap threshold).

    By default glibc raises its mmap threshold after each large free, so decoded photos end up in heap arenas
    that the process keeps: a long-running server's RSS then grows with every big upload. Linux / glibc only;
    returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, 4 * 1024 * 1024))
    except (OSError, AttributeError):
        return False


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
    app = create_app(model, config, listen_host=host)
    limit_heap_growth()
    sock = bind_socket(host, port)
    shown = f"[{host}]" if ":" in host else host
    if on_ready is not None:
        on_ready(f"http://{shown}:{sock.getsockname()[1]}")
    try:
        make_server(app, sock, log_level=log_level).run(sockets=[sock])
    finally:
        sock.close()

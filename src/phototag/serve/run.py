"""Running the service: the app for a model, a uvicorn server on a bound socket, and ``serve`` (blocking).

Only :func:`create_app` touches FastAPI (through :mod:`phototag.serve.app`, imported when called), so the CLI can
import this module for ``phototag serve`` without the ``serve`` extra installed until it is used.
"""

from __future__ import annotations

import asyncio
import math
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependencyError
from .config import ServiceConfig, resolve_config
from .identity import model_identity, model_label

if TYPE_CHECKING:
    from ..model import TagModel


def create_app(model: TagModel, config: ServiceConfig | None = None, **overrides: Any):
    """The FastAPI application serving ``model``.

    Args:
        model: A loaded :class:`TagModel` (e.g. ``load_model(None)``, the shipped default).
        config: Limits and switches; ``overrides`` replace single fields (``None`` values are ignored).

    Returns:
        A ``fastapi.FastAPI`` app; run it with uvicorn (see :func:`serve`).

    Raises:
        MissingDependencyError: FastAPI is not installed (``pip install "phototag[serve]"``).
        BadInputError: An unknown or inconsistent setting.
    """
    try:
        from .app import build_app
    except ImportError as err:
        raise MissingDependencyError(
            f'phototag serve needs FastAPI ({err.name} is missing): pip install "phototag[serve]"'
        ) from None

    config = resolve_config(config, model_label(model), **overrides)
    return build_app(model, config, model_identity(model, config.model_name))


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
        raise MissingDependencyError('phototag serve needs uvicorn: pip install "phototag[serve]"') from None
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

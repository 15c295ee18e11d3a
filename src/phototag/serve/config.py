"""What ``phototag serve`` is configured with: limits, switches, the token, the host names it answers to."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import BadInputError

TOKEN_ENV = "PHOTOTAG_TOKEN"
WEB_DIR = Path(__file__).resolve().parent.parent / "web"

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


def resolve_config(config: ServiceConfig | None, model_name: str, **overrides: Any) -> ServiceConfig:
    """A checked copy of ``config`` with ``overrides`` applied (``None`` values ignored) and defaults filled in.

    The token comes from ``$PHOTOTAG_TOKEN`` when none is given; ``model_name`` replaces the placeholder name.

    Raises:
        BadInputError: An unknown setting, an empty token, or cross-origin access without a token.
    """
    config = replace(config) if config is not None else ServiceConfig()
    known = {f.name for f in fields(ServiceConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise BadInputError(f"Unknown service setting {key!r}; valid: {sorted(known)}.")
        if value is not None:
            setattr(config, key, value)
    if config.token is None and os.environ.get(TOKEN_ENV):
        config.token = os.environ[TOKEN_ENV]
    if config.token is not None and not config.token.strip():
        raise BadInputError("The service token is empty; give a non-empty token (or none for an open server).")
    if config.cors_origins and config.token is None:
        raise BadInputError(
            "Cross-origin access (--cors-origins) needs a token: start the server with $PHOTOTAG_TOKEN or --token-file."
        )
    if config.model_name == "model":
        config.model_name = model_name
    return config


def read_token_file(path: str | os.PathLike) -> str:
    """The token stored in ``path`` (first line, surrounding spaces removed).

    Raises:
        BadInputError: The file is missing, unreadable or empty (the message names it).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise BadInputError(f"Cannot read the token file '{path}' ({reason}); give a readable file.") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise BadInputError(f"The token file '{path}' is empty; write the token on its first line.")
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

"""The tagging service behind ``phototag serve``: an HTTP API and a web page over one :class:`~phototag.model.TagModel`.

Endpoints (FastAPI; OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

- ``POST /v1/tag`` — multipart ``files`` (one or more images) and optional ``user_tags`` (one value for all images or
  one per image, space-separated), query ``top_k`` / ``threshold`` / ``balanced`` → ``{"model": {"id", "version",
  "vocabulary_size", ...}, "results": [{"image", "tags": [{"tag", "score"}, ...]} | {"image", "error": problem}]}``;
  each result has the shape of a ``phototag predict --format jsonl`` line.
- ``GET /v1/tags`` — the vocabulary; ``GET /healthz`` — liveness, model and batching counters (never needs a token).
- ``POST /v1/feedback/images`` (multipart ``file``) and ``POST /v1/feedback`` (JSON ``image_id``, ``tag``,
  ``decision``) — the web page's accept / reject clicks, stored by :mod:`phototag.feedback`.
- ``GET /`` — the web page (static files in ``phototag/web/``).

Errors are RFC 9457 problem details (``application/problem+json``: ``type``, ``title``, ``status``, ``detail``,
``code``), their status taken from the error's class (:mod:`phototag.serve.problems`).

Modules, by role: :mod:`~phototag.serve.config` (limits, token, host names), :mod:`~phototag.serve.uploads`
(names, header sizes, reduced decoding), :mod:`~phototag.serve.batching` (the micro-batcher and the scorer),
:mod:`~phototag.serve.identity` (which model answers), :mod:`~phototag.serve.problems` (error answers),
:mod:`~phototag.serve.app` (the only module importing FastAPI: routes and middleware) and
:mod:`~phototag.serve.run` (the app for a model, the uvicorn server, ``serve``). docs/security.md has the threat
model behind the limits.
"""

from __future__ import annotations

from .config import TOKEN_ENV, ServiceConfig, read_token_file
from .identity import ModelIdentity, model_identity, model_label
from .run import bind_socket, create_app, make_server, serve

__all__ = [
    "TOKEN_ENV",
    "ModelIdentity",
    "ServiceConfig",
    "bind_socket",
    "create_app",
    "make_server",
    "model_identity",
    "model_label",
    "read_token_file",
    "serve",
]

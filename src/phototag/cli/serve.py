"""``phototag serve [MODEL_DIR]``: the HTTP API and web page (see :mod:`phototag.serve`)."""

from __future__ import annotations

import argparse
import sys

from ..serve.config import TOKEN_ENV, ServiceConfig
from .options import add_rules_and_language_options, add_run_options, run_options


def cmd_serve(args: argparse.Namespace) -> int:
    from ..feedback import default_feedback_path
    from ..model import load_model
    from ..rules import resolve_rules
    from ..serve import model_label, read_token_file, serve

    token = args.token
    if token is not None:
        print(
            f"phototag serve: warning: --token is visible to other users in the process list (ps); "
            f"set ${TOKEN_ENV} or use --token-file instead.",
            file=sys.stderr,
        )
    if args.token_file is not None:
        token = read_token_file(args.token_file)
    token = token or _env_token()
    model = load_model(args.model)
    feedback_db = None if args.no_feedback else (args.feedback_db or default_feedback_path())
    config = ServiceConfig(
        token=token,
        feedback_db=feedback_db,
        max_file_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=int(args.max_megapixels * 1_000_000),
        max_request_pixels=int(args.max_request_megapixels * 1_000_000),
        max_files=args.max_files,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        allowed_hosts=tuple(_names(args.allowed_hosts)) if args.allowed_hosts else None,
        cors_origins=tuple(_names(args.cors_origins)),
        model_name=model_label(model),
        run_options=run_options(args),
        rules=args.rules if args.rules is not None else resolve_rules(None),
        lang=args.lang or "en",
    )

    def ready(url: str) -> None:
        auth = "bearer token required for /v1/" if token else "no token"
        where = f"feedback in {feedback_db}" if feedback_db else "feedback off"
        print(f"phototag serve: {config.model_name} at {url}  (docs {url}/docs; {auth}; {where})", flush=True)
        if not token and args.host not in ("127.0.0.1", "localhost", "::1"):
            print(
                f"phototag serve: warning: listening on {args.host} without a token: anyone on the network can "
                f"use the API; set ${TOKEN_ENV} or --token-file.",
                file=sys.stderr,
                flush=True,
            )

    # SIGINT / SIGTERM: uvicorn finishes in-flight requests, the app drains its batch queue, then uvicorn re-raises
    # the signal (exit status 130 / 143, as for any signalled process).
    serve(model, host=args.host, port=args.port, config=config, on_ready=ready, log_level="warning")
    return 0


def _env_token() -> str | None:
    import os

    return os.environ.get(TOKEN_ENV) or None


def _names(values: list[str]) -> list[str]:
    """Comma- or space-separated values, possibly given several times."""
    return [name for value in values for name in value.replace(",", " ").split()]


def register(subparsers) -> None:

    defaults = ServiceConfig()
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP: JSON API (POST /v1/tag) and a web page",
        description="Serve a model over HTTP: POST /v1/tag, GET /v1/tags, GET /healthz, docs at /docs, a web page "
        "at /. Stops gracefully on Ctrl-C / SIGTERM. Needs the 'serve' extra: pip install \"phototag[serve]\".",
    )
    p.add_argument("model", nargs="?", default=None, help="model directory (default: the model shipped with phototag)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = any free port; default 8000)")
    p.add_argument(
        "--token",
        default=None,
        help=f"require 'Authorization: Bearer TOKEN' on /v1/ (visible in ps: prefer ${TOKEN_ENV} or --token-file)",
    )
    p.add_argument("--token-file", default=None, metavar="PATH", help="read the token from the first line of PATH")
    p.add_argument(
        "--allowed-hosts",
        action="append",
        default=[],
        metavar="NAMES",
        help="host names the server answers to (comma-separated; default without a token: this machine's "
        "loopback names and --host)",
    )
    p.add_argument(
        "--cors-origins",
        action="append",
        default=[],
        metavar="ORIGINS",
        help="web origins allowed to call the API from a browser, e.g. https://photos.example (needs a token)",
    )
    p.add_argument(
        "--feedback-db",
        default=None,
        help="SQLite file for the web page's accept/reject feedback "
        "(default $PHOTOTAG_FEEDBACK_DB or ~/.local/share/phototag/feedback.sqlite)",
    )
    p.add_argument("--no-feedback", action="store_true", help="do not store feedback")
    p.add_argument(
        "--max-upload-mb", type=float, default=defaults.max_file_bytes / 1024 / 1024, help="largest image upload"
    )
    p.add_argument(
        "--max-megapixels", type=float, default=defaults.max_pixels / 1e6, help="largest image (width x height)"
    )
    p.add_argument(
        "--max-request-megapixels",
        type=float,
        default=defaults.max_request_pixels / 1e6,
        help="most pixels in one request, all images together",
    )
    p.add_argument("--max-files", type=int, default=defaults.max_files, help="most images per request")
    p.add_argument(
        "--max-queue", type=int, default=defaults.max_queue, help="most requests waiting for the model (503 beyond)"
    )
    p.add_argument("--max-batch", type=int, default=defaults.max_batch, help="most images per model call")
    p.add_argument(
        "--max-wait-ms", type=float, default=defaults.max_wait_ms, help="wait for more requests to batch together"
    )

    add_run_options(p, cache=False)
    add_rules_and_language_options(p)
    p.set_defaults(func=cmd_serve)

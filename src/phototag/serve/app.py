"""The FastAPI routes and middleware of ``phototag serve``: the only module of phototag that imports FastAPI.

Imported when an app is built (:func:`phototag.serve.create_app`). FastAPI reads the endpoint signatures'
annotations, so the request and response models live at module level here.

Hardening (docs/security.md has the threat model): in a request of several images, a file that cannot be read or
scored fails only its own entry (``{"image", "error": problem}``); large photos are decoded at a reduced size (the
model looks at about 300 pixels) under a pixel budget shared by all requests, and a request's total pixels are
limited; a full queue answers 503 with ``Retry-After``; slow clients are cut off (header and body deadlines); a
token-less server answers only for its allowed host names and refuses cross-origin writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import urllib.parse
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import PhototagError
from ..feedback import FeedbackDecision, FeedbackStore, clean_user_tags
from ..images import CorruptImageError, ImageLoadError
from ..languages import (
    UnknownLanguageError,
    check_language,
    supported_languages,
    translate_predictions,
    translate_tag,
)
from ..model import TagModel
from ..rules import Rules, apply_rules, label_thresholds, rule_labels
from .batching import MicroBatcher, QueueFullError, make_scorer
from .config import IMAGE_CONTENT_TYPES, WEB_DIR, ServiceConfig, allowed_host_names
from .identity import ModelIdentity
from .problems import PROBLEM_CONTENT_TYPE, ServiceError, as_service_error, problem, problem_of
from .uploads import DecodedImage, PixelBudget, clean_upload_name, decode_reduced, draft_rule, image_size

log = logging.getLogger("phototag.serve")

#: Methods that change state; refused cross-origin on a server without a token.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class TagScore(BaseModel):
    tag: str
    score: float


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error answer, and the ``error`` of a failed image."""

    type: str = Field(description="urn:phototag:problem:<code>")
    title: str = Field(description="what kind of problem, the same for every occurrence of this type")
    status: int = Field(description="the HTTP status this problem answers with (alone in a request)")
    detail: str = Field(description="what went wrong this time, in one line")
    code: str = Field(description="the short name of the type, such as bad_image")


class Prediction(BaseModel):
    image: str = Field(description="the uploaded file name (folders and control characters removed)")
    tags: list[TagScore] | None = Field(None, description="chosen tags, highest score first (absent on error)")
    error: Problem | None = Field(None, description="only when this image failed: what went wrong")


class ModelInfo(BaseModel):
    id: str = Field(description="sha256:<16 hex digits> of the model's files: the same files give the same id")
    version: str = Field(description="phototag version + method and id prefix, e.g. 0.1.0+ensemble.3f2a9c1d")
    vocabulary_size: int = Field(description="how many tags the model can suggest")
    name: str = Field(description="method@directory, as /healthz shows it")
    method: str = Field(description="the tagging method")


class TagResponse(BaseModel):
    model: ModelInfo = Field(description="which model answered")
    results: list[Prediction] = Field(description="one entry per uploaded file, in the order sent")


class StoredImage(BaseModel):
    image_id: str = Field(description="SHA-1 of the image bytes; send it with each decision")


class DecisionSaved(BaseModel):
    id: int
    image_id: str
    tag: str
    decision: str


class BodyTimeoutError(Exception):
    """The client did not send its request body within the deadline."""


class BodyDeadline:
    """ASGI middleware: the whole request body must arrive within ``seconds`` (a slow sender gets 408).

    The deadline wraps ``receive``; a timeout is marked in the scope, so the error handlers answer 408 whatever layer
    (form parsing, JSON parsing) noticed it.
    """

    def __init__(self, app, seconds: float):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        started = False

        async def timed_receive():
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                return await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                scope["phototag.body_timeout"] = True
                raise BodyTimeoutError(f"the request body did not arrive within {self.seconds:g} s") from None

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except BodyTimeoutError:
            if not started:
                response = body_timeout_response(self.seconds)
                await response(scope, receive, send)


def _shown(part: Any, limit: int = 40) -> str:
    """A field name from a client, safe to show on one line (a JSON key may hold a newline or be huge)."""
    text = str(part)
    text = text if text.isprintable() else repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def problem_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An ``application/problem+json`` answer."""
    return JSONResponse(
        problem(status, code, detail), status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE
    )


def body_timeout_response(seconds: float) -> JSONResponse:
    return problem_response(
        408,
        "request_timeout",
        f"The request body did not arrive within {seconds:g} s.",
        {"Connection": "close"},
    )


@dataclass
class Entry:
    """One uploaded file of a request: what came of it (a decoded image, or an error of its own)."""

    name: str
    upload: UploadFile
    user_tags: list[str]
    size: tuple[int, int] = (0, 0)
    item: DecodedImage | None = None
    error: ServiceError | None = None


def build_app(model: TagModel, config: ServiceConfig, identity: ModelIdentity) -> FastAPI:
    """The app for ``model`` with resolved ``config`` (use :func:`phototag.serve.create_app`)."""
    batcher = MicroBatcher(
        make_scorer(model, config.run_options),
        max_batch=config.max_batch,
        max_wait_ms=config.max_wait_ms,
        max_queue=config.max_queue,
    )
    decoding = PixelBudget(config.decode_pixels)
    draft = draft_rule(model)
    hosts = allowed_host_names(config)
    feedback = FeedbackStore(config.feedback_db) if config.feedback_db is not None else None
    started = time.time()
    rules = config.rules if config.rules is not None else Rules()
    decision = model.decision_with(label_thresholds(rules, model.tags))  # rule thresholds may lower the model's
    check_language(config.lang)  # a bad server default fails at start, not on every request

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        log.info("phototag serve: model %s (%s, %d tags) ready", config.model_name, identity.id, len(model.vocab))
        try:
            yield
        finally:
            # Uvicorn has stopped accepting connections and let in-flight requests finish; drain the queue.
            await batcher.close()
            if feedback is not None:
                feedback.close()
            log.info("phototag serve: stopped after %d batches (%d images)", batcher.batches, batcher.items)

    app = FastAPI(
        title="phototag",
        version=__version__,
        description="Recommend tags for photos. POST /v1/tag answers which model spoke and one result per image "
        "(each the shape of a `phototag predict --format jsonl` line); errors are RFC 9457 problem details "
        "(application/problem+json). Send `Authorization: Bearer <token>` when the server has a token.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.feedback = feedback
    app.state.config = config
    app.state.identity = identity
    error = problem_response

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return error(exc.http_status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(PhototagError)
    async def _phototag_error(request: Request, exc: PhototagError):
        # The message of a library error may name server paths: log it, answer with the class's status and kind.
        log.warning("phototag serve: %s %s: %s", request.method, request.url.path, exc)
        detail = f"The request failed ({type(exc).__name__}); the server log has details."
        return error(exc.http_status, exc.code, detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        if request.scope.get("phototag.body_timeout"):
            return body_timeout_response(config.body_timeout_s)
        parts = []
        for item in exc.errors():
            where = ".".join(_shown(p) for p in item.get("loc", ()) if p not in ("body", "query"))
            message = str(item.get("msg")).removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
        return error(422, "invalid_request", "; ".join(parts)[:1000] or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if request.scope.get("phototag.body_timeout"):
            return body_timeout_response(config.body_timeout_s)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # The exception text may hold server paths: it goes to the log, the client gets its kind only.
        log.exception("phototag serve: %s %s failed", request.method, request.url.path)
        return error(500, "internal_error", f"The server failed on this request ({type(exc).__name__}).")

    def host_refusal(request: Request) -> JSONResponse | None:
        """The Host header must name this server (DNS-rebinding guard); writes must come from its own pages."""
        raw_host = request.headers.get("host", "")
        name = (urllib.parse.urlsplit(f"//{raw_host}").hostname or "") if raw_host else ""
        if hosts is not None and name not in hosts:
            return error(
                400,
                "invalid_host",
                f"This server does not answer to the host name {raw_host[:100]!r}; start it with --allowed-hosts "
                "NAME (or a token) to serve it under other names.",
            )
        origin = request.headers.get("origin")
        cross_site = origin is not None and origin != f"{request.url.scheme}://{raw_host}"
        if config.token is None and request.method in UNSAFE_METHODS and cross_site:
            return error(
                403,
                "cross_origin",
                f"Writes from another web site ({origin[:100]}) are refused on a server without a token.",
            )
        return None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Host and origin checks, the bearer token for /v1/..., and the request-size limit before any body is read."""
        refused = host_refusal(request)
        if refused is not None:
            return refused
        if request.url.path.startswith("/v1/"):
            if config.token is not None:
                sent = request.headers.get("authorization", "")
                scheme, _, value = sent.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), config.token.encode()):
                    return error(
                        401,
                        "unauthorized",
                        "This server needs a token: send the header 'Authorization: Bearer <token>'.",
                        {"WWW-Authenticate": "Bearer"},
                    )
            length = request.headers.get("content-length")
            if length is not None:
                try:
                    too_big = int(length) > config.max_request_bytes
                except ValueError:
                    return error(400, "bad_request", f"Content-Length must be an integer. Got {length[:40]!r}.")
                if too_big:
                    return error(
                        413,
                        "payload_too_large",
                        f"Request body is {int(length):,} bytes; the limit is {config.max_request_bytes:,}.",
                    )
            elif request.method == "POST":
                return error(411, "length_required", "Send a Content-Length header (chunked uploads are refused).")
            if request.method == "POST" and request.url.path == "/v1/tag":
                try:
                    batcher.check_room()  # before the body is read: a full queue costs the server nothing
                except QueueFullError as err:
                    return queue_full(err)
        return await call_next(request)

    def queue_full(err: QueueFullError) -> JSONResponse:
        return error(
            503,
            "busy",
            f"The server is busy ({batcher.pending} requests waiting); retry in {err.retry_after} s.",
            {"Retry-After": str(err.retry_after)},
        )

    app.add_middleware(BodyDeadline, seconds=config.body_timeout_s)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    def image_error(err: ImageLoadError, name: str) -> ServiceError:
        # The status comes from the error's class (ImageTooLargeError: 413); the reason names no server path.
        return as_service_error(err, f"{name}: {err.reason}")

    def check_upload(entry: Entry) -> None:
        """Content type, byte size and pixel size from the file's header (nothing decoded yet)."""
        upload, name = entry.upload, entry.name
        content_type = (upload.content_type or "").split(";")[0].strip().lower()
        if content_type not in IMAGE_CONTENT_TYPES:
            raise ServiceError(
                415,
                "unsupported_media_type",
                f"'{name}' was sent as {content_type[:60] or 'no content type'!r}; send images as one of "
                f"{', '.join(sorted(IMAGE_CONTENT_TYPES))}.",
            )
        size = upload.size
        if size is None:
            upload.file.seek(0, 2)
            size = upload.file.tell()
        if size > config.max_file_bytes:
            raise ServiceError(
                413, "payload_too_large", f"'{name}' is over the limit of {config.max_file_bytes:,} bytes per image."
            )
        upload.file.seek(0)
        head = upload.file.read(min(size, 4 * 1024 * 1024))  # enough for any header PIL reads for the size
        try:
            entry.size = image_size(head, name)
        except ImageLoadError as err:
            if len(head) < size and isinstance(err, CorruptImageError):
                entry.size = (0, 0)  # a header beyond the first 4 MB: the full decode decides
            else:
                raise image_error(err, name) from None
        width, height = entry.size
        if width * height > config.max_pixels:
            raise ServiceError(
                413,
                "bad_image",
                f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
                f"{config.max_pixels:,}",
            )

    async def decode_entry(entry: Entry) -> DecodedImage:
        """Decode one upload at reduced size, inside the shared pixel budget."""
        width, height = entry.size
        pixels = width * height or config.max_pixels  # size unknown from the first 4 MB: budget the largest
        await decoding.acquire(pixels)
        try:
            await entry.upload.seek(0)
            data = await entry.upload.read(config.max_file_bytes + 1)
            image = await run_in_threadpool(
                decode_reduced,
                data,
                source=entry.name,
                max_pixels=config.max_pixels,
                side=config.decode_side,
                draft=draft,
            )
            del data
        except ImageLoadError as err:
            raise image_error(err, entry.name) from None
        finally:
            await decoding.release(pixels)
        return DecodedImage(name=entry.name, data=b"", image=image, user_tags=entry.user_tags, size=(width, height))

    def split_user_tags(values: list[str] | None, n: int) -> list[list[str]]:
        values = [v for v in (values or []) if v is not None]
        if len(values) > 1 and len(values) != n:
            raise ServiceError(
                422,
                "invalid_request",
                f"Got {len(values)} user_tags values for {n} images; send one (for all) or one per image.",
            )
        try:
            cleaned = [clean_user_tags(v) for v in values]
        except ValueError as err:
            raise ServiceError(422, "invalid_request", f"user_tags: {err}") from None
        if not cleaned:
            return [[] for _ in range(n)]
        return [list(cleaned[0]) for _ in range(n)] if len(cleaned) == 1 else cleaned

    async def score_entries(entries: list[Entry]) -> dict[int, Any]:
        """Scores of the decoded entries by index; an entry whose scoring fails gets its own error."""
        ready = [i for i, e in enumerate(entries) if e.item is not None]
        if not ready:
            return {}
        try:
            rows = await batcher.submit([entries[i].item for i in ready])
            return dict(zip(ready, rows, strict=True))
        except QueueFullError:
            raise
        except Exception:
            if len(ready) == 1:
                log.exception("phototag serve: scoring %r failed", entries[ready[0]].name)
                entries[ready[0]].error = model_failure(entries[ready[0]].name)
                return {}
        scores = {}
        for i in ready:  # find the file(s) the model cannot score; the rest are answered
            try:
                scores[i] = (await batcher.submit([entries[i].item]))[0]
            except QueueFullError:
                raise
            except Exception:
                log.exception("phototag serve: scoring %r failed", entries[i].name)
                entries[i].error = model_failure(entries[i].name)
        return scores

    def model_failure(name: str) -> ServiceError:
        return ServiceError(500, "internal_error", f"The model could not score '{name}'; the server log has details.")

    @app.post(
        "/v1/tag",
        response_model=TagResponse,
        response_model_exclude_none=True,
        summary="Suggest tags for one or more images",
        responses={code: {"model": Problem, "content": {PROBLEM_CONTENT_TYPE: {}}} for code in (413, 415, 422, 503)},
    )
    async def tag_images(
        files: Annotated[list[UploadFile], File(description="one or more images (JPEG, PNG, WebP, GIF, BMP, TIFF)")],
        user_tags: Annotated[
            list[str] | None,
            Form(description="the user's own tags, space-separated: one value for all images or one per image"),
        ] = None,
        top_k: Annotated[int | None, Query(ge=1, le=10_000, description="return exactly the K best tags")] = None,
        balanced: Annotated[
            bool | None,
            Query(
                description="top_k: the best tag, then the others by the model's balancing offsets (rare tags get a "
                "share); default: the model's own choice"
            ),
        ] = None,
        threshold: Annotated[
            float | None,
            Query(ge=0.0, le=1.0, allow_inf_nan=False, description="keep tags scoring at least this (default 0.3)"),
        ] = None,
        lang: Annotated[
            str | None, Query(description="keywords in this language (en, de, fr, es, it, nl, ja; GET /v1/languages)")
        ] = None,
    ):
        lang = checked_language(lang)
        if len(files) > config.max_files:
            raise ServiceError(
                413, "too_many_files", f"Got {len(files)} images; the limit is {config.max_files} per request."
            )
        if balanced:
            try:
                model.rank_offset(balanced)
            except ValueError as err:
                raise ServiceError(422, "invalid_request", str(err)) from None
        tags_per_image = split_user_tags(user_tags, len(files))
        entries = [Entry(clean_upload_name(f.filename), f, t) for f, t in zip(files, tags_per_image, strict=True)]
        for entry in entries:
            try:
                check_upload(entry)
            except ServiceError as err:
                entry.error = err
        total = sum(e.size[0] * e.size[1] for e in entries if e.error is None)
        if total > config.max_request_pixels:
            raise ServiceError(
                413,
                "too_many_pixels",
                f"The images of this request hold {total:,} pixels together; the limit is "
                f"{config.max_request_pixels:,} per request. Send fewer or smaller images per request.",
            )
        for entry in entries:  # one at a time: a request never holds more than one full-size picture
            if entry.error is None:
                try:
                    entry.item = await decode_entry(entry)
                except ServiceError as err:
                    entry.error = err
        try:
            scores = await score_entries(entries)
        except QueueFullError as err:
            return queue_full(err)
        if not scores:  # nothing to answer: the request fails as its first file did
            first = next(e.error for e in entries if e.error is not None)
            raise first
        ok = sorted(scores)
        formatted = model.format_predictions(
            [entries[i].name for i in ok],
            np.stack([scores[i] for i in ok]),
            top_k=top_k,
            threshold=threshold,
            balanced=balanced,
            decision=decision,
        )
        formatted = translate_predictions(apply_rules(formatted, rules), lang)
        by_index = dict(zip(ok, formatted, strict=True))
        results = [by_index.get(i) or {"image": e.name, "error": problem_of(e.error)} for i, e in enumerate(entries)]
        return {"model": identity.to_dict(), "results": results}

    def checked_language(lang: str | None) -> str:
        try:
            return check_language(lang if lang is not None else config.lang)
        except UnknownLanguageError as err:
            raise as_service_error(err) from None

    @app.get("/v1/languages", summary="Languages keywords can be given in (?lang= of POST /v1/tag)")
    async def languages() -> dict[str, Any]:
        return {"languages": supported_languages(), "default": config.lang}

    @app.get("/v1/translations", summary="The model's tags in a language: {tag: translated tag}")
    async def tag_translations(
        lang: Annotated[str, Query(description="language code, e.g. de (GET /v1/languages)")],
    ) -> dict[str, Any]:
        code = checked_language(lang)
        names = list(dict.fromkeys([*model.tags, *rule_labels(rules)]))
        return {"lang": code, "tags": {tag: translate_tag(tag, code) for tag in names}}

    @app.get("/v1/tags", summary="The model's vocabulary (the tags it can suggest), in score-column order")
    async def vocabulary() -> dict[str, Any]:
        return {"model": identity.to_dict(), "n_tags": len(model.vocab), "tags": model.tags}

    @app.get("/healthz", summary="Liveness and counters (no token needed)")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": config.model_name,
            "model_id": identity.id,
            "model_version": identity.version,
            "method": model.method.name,
            "n_tags": len(model.vocab),
            "version": __version__,
            "uptime_s": round(time.time() - started, 1),
            "batches": batcher.batches,
            "images_scored": batcher.items,
            "queued": batcher.pending,
            "refused_busy": batcher.refused,
            "feedback": feedback is not None,
        }

    # --- feedback ---
    def need_feedback() -> FeedbackStore:
        if feedback is None:
            raise ServiceError(
                404, "feedback_disabled", "Feedback is off on this server; start it with --feedback-db PATH."
            )
        return feedback

    @app.post("/v1/feedback/images", response_model=StoredImage, summary="Store a photo to give feedback on")
    async def feedback_image(
        file: Annotated[UploadFile, File(description="the photo the decisions are about")],
        user_tags: Annotated[str | None, Form(description="the user's own tags, space-separated")] = None,
    ):
        store = need_feedback()
        try:
            tags = clean_user_tags(user_tags)
        except ValueError as err:
            raise ServiceError(422, "invalid_request", f"user_tags: {err}") from None
        entry = Entry(clean_upload_name(file.filename), file, tags)
        check_upload(entry)
        item = await decode_entry(entry)  # the photo must decode; the original bytes are what is stored
        await file.seek(0)
        original = await file.read(config.max_file_bytes + 1)
        content_type = (file.content_type or "").split(";")[0].strip().lower()
        image_id = await run_in_threadpool(
            store.add_image,
            original,
            name=item.name,
            content_type=content_type,
            width=item.size[0] or item.image.width,
            height=item.size[1] or item.image.height,
            user_tags=item.user_tags,
        )
        return {"image_id": image_id}

    @app.post("/v1/feedback", response_model=DecisionSaved, summary="Record an accept / reject / clear click")
    async def feedback_decision(body: FeedbackDecision):
        store = need_feedback()
        try:
            row = await run_in_threadpool(
                store.add_decision, body.image_id, body.tag, body.decision, score=body.score, model=config.model_name
            )
        except KeyError:
            raise ServiceError(
                404, "unknown_image", f"No stored image {body.image_id!r}; POST it to /v1/feedback/images first."
            ) from None
        return {"id": row, "image_id": body.image_id, "tag": body.tag, "decision": body.decision}

    @app.get("/v1/feedback/summary", summary="Counts of stored photos and decisions")
    async def feedback_summary() -> dict[str, int]:
        return await run_in_threadpool(need_feedback().summary)

    # --- the web page ---
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/config.json", include_in_schema=False)
    async def page_config():
        return {
            "needs_token": config.token is not None,
            "feedback": feedback is not None,
            "model": config.model_name,
            "model_id": identity.id,
            "lang": config.lang,
            "languages": supported_languages(),
        }

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app

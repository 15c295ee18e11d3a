"""The FastAPI routes of ``phototag serve`` (imported only when FastAPI is installed; see :mod:`phototag.service`).

FastAPI reads the endpoint signatures' annotations, so the request and response models live at module level here.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .feedback import FeedbackStore
from .images import ImageLoadError, decode_image
from .languages import UnknownLanguageError, check_language, supported_languages, translate_predictions, translate_tag
from .model import TagModel
from .rules import Rules, apply_rules, rule_labels
from .service import (
    IMAGE_CONTENT_TYPES,
    WEB_DIR,
    DecodedImage,
    MicroBatcher,
    ServiceConfig,
    ServiceError,
    make_scorer,
)

log = logging.getLogger("phototag.service")


class TagScore(BaseModel):
    tag: str
    score: float


class Prediction(BaseModel):
    image: str = Field(description="the uploaded file name")
    tags: list[TagScore] = Field(description="chosen tags, highest score first")


class StoredImage(BaseModel):
    image_id: str = Field(description="SHA-1 of the image bytes; send it with each decision")


class Decision(BaseModel):
    image_id: str = Field(description="from POST /v1/feedback/images")
    tag: str = Field(min_length=1, max_length=200)
    decision: str = Field(pattern="^(accept|reject|clear)$", description="accept, reject or clear")
    score: float | None = Field(None, description="the score the tag was suggested with")


class DecisionSaved(BaseModel):
    id: int
    image_id: str
    tag: str
    decision: str


def build_app(model: TagModel, config: ServiceConfig) -> FastAPI:
    """The app for ``model`` with resolved ``config`` (use :func:`phototag.service.create_app`)."""
    batcher = MicroBatcher(make_scorer(model), max_batch=config.max_batch, max_wait_ms=config.max_wait_ms)
    feedback = FeedbackStore(config.feedback_db) if config.feedback_db is not None else None
    started = time.time()
    rules = config.rules if config.rules is not None else Rules()
    check_language(config.lang)  # a bad server default fails at start, not on every request

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        log.info("phototag serve: model %s (%d tags) ready", config.model_name, len(model.vocab))
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
        description="Recommend tags for photos. Responses of POST /v1/tag have the shape of "
        "`phototag predict --format jsonl`. Send `Authorization: Bearer <token>` when the server has a token.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.feedback = feedback
    app.state.config = config

    def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return error(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for item in exc.errors():
            where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query"))
            parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return error(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("phototag serve: %s %s failed", request.method, request.url.path)
        return error(500, "internal_error", f"The server failed on this request ({type(exc).__name__}: {exc}).")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Bearer token for /v1/..., and the request-size limit before any body is read."""
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
                    return error(400, "bad_request", f"Content-Length must be an integer. Got {length!r}.")
                if too_big:
                    return error(
                        413,
                        "payload_too_large",
                        f"Request body is {int(length):,} bytes; the limit is {config.max_request_bytes:,}.",
                    )
            elif request.method == "POST":
                return error(411, "length_required", "Send a Content-Length header (chunked uploads are refused).")
        return await call_next(request)

    async def read_upload(upload: UploadFile, user_tags: list[str]) -> DecodedImage:
        name = upload.filename or "upload"
        content_type = (upload.content_type or "").split(";")[0].strip().lower()
        if content_type not in IMAGE_CONTENT_TYPES:
            raise ServiceError(
                415,
                "unsupported_media_type",
                f"'{name}' was sent as {content_type or 'no content type'!r}; send images as one of "
                f"{', '.join(sorted(IMAGE_CONTENT_TYPES))}.",
            )
        data = await upload.read(config.max_file_bytes + 1)
        if len(data) > config.max_file_bytes:
            raise ServiceError(
                413, "payload_too_large", f"'{name}' is over the limit of {config.max_file_bytes:,} bytes per image."
            )
        try:
            image = await run_in_threadpool(decode_image, data, source=name, max_pixels=config.max_pixels)
        except ImageLoadError as err:
            status = 413 if "over the limit" in err.reason or "decompression bomb" in err.reason else 422
            raise ServiceError(status, "bad_image", f"{err.path}: {err.reason}") from None
        return DecodedImage(name=name, data=data, image=image, user_tags=user_tags)

    def split_user_tags(values: list[str] | None, n: int) -> list[list[str]]:
        values = [v for v in (values or []) if v is not None]
        if not values:
            return [[] for _ in range(n)]
        if len(values) == 1:
            return [values[0].split() for _ in range(n)]
        if len(values) != n:
            raise ServiceError(
                422,
                "invalid_request",
                f"Got {len(values)} user_tags values for {n} images; send one (for all) or one per image.",
            )
        return [v.split() for v in values]

    @app.post("/v1/tag", response_model=list[Prediction], summary="Suggest tags for one or more images")
    async def tag_images(
        files: Annotated[list[UploadFile], File(description="one or more images (JPEG, PNG, WebP, GIF, BMP, TIFF)")],
        user_tags: Annotated[
            list[str] | None,
            Form(description="the user's own tags, space-separated: one value for all images or one per image"),
        ] = None,
        top_k: Annotated[int | None, Query(ge=1, description="return exactly the K best tags")] = None,
        balanced: Annotated[
            bool | None, Query(description="top_k ranked by the model's balancing offsets (rare tags get a share)")
        ] = None,
        threshold: Annotated[
            float | None, Query(description="keep tags scoring at least this (default rule: 0.3)")
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
        items = [await read_upload(f, t) for f, t in zip(files, tags_per_image, strict=True)]
        scores = await batcher.submit(items)
        predictions = model.format_predictions(
            [i.name for i in items], scores, top_k=top_k, threshold=threshold, balanced=balanced
        )
        return translate_predictions(apply_rules(predictions, rules), lang)

    def checked_language(lang: str | None) -> str:
        try:
            return check_language(lang if lang is not None else config.lang)
        except UnknownLanguageError as err:
            raise ServiceError(422, "unknown_language", str(err)) from None

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
        return {"model": config.model_name, "n_tags": len(model.vocab), "tags": model.tags}

    @app.get("/healthz", summary="Liveness and counters (no token needed)")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": config.model_name,
            "method": model.method.name,
            "n_tags": len(model.vocab),
            "version": __version__,
            "uptime_s": round(time.time() - started, 1),
            "batches": batcher.batches,
            "images_scored": batcher.items,
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
        item = await read_upload(file, (user_tags or "").split())
        content_type = (file.content_type or "").split(";")[0].strip().lower()
        image_id = await run_in_threadpool(
            store.add_image,
            item.data,
            name=item.name,
            content_type=content_type,
            width=item.image.width,
            height=item.image.height,
            user_tags=item.user_tags,
        )
        return {"image_id": image_id}

    @app.post("/v1/feedback", response_model=DecisionSaved, summary="Record an accept / reject / clear click")
    async def feedback_decision(body: Decision):
        store = need_feedback()
        try:
            row = await run_in_threadpool(
                store.add_decision, body.image_id, body.tag, body.decision, score=body.score, model=config.model_name
            )
        except KeyError:
            raise ServiceError(
                404, "unknown_image", f"No stored image {body.image_id!r}; POST it to /v1/feedback/images first."
            ) from None
        return {"id": row, "image_id": body.image_id, "tag": body.tag.strip(), "decision": body.decision}

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
            "lang": config.lang,
            "languages": supported_languages(),
        }

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app

"""Errors as RFC 9457 problem details (``application/problem+json``), their status taken from the error's class.

Every error answer has ``type`` (``urn:phototag:problem:<code>``), ``title`` (the same for every problem of a
type), ``status``, ``detail`` (this occurrence, one line) and ``code`` (the short name, for clients that
switch on it). A failed image inside a ``POST /v1/tag`` answer carries the same object as its ``error``.
The status comes from :attr:`phototag.errors.PhototagError.http_status` (or a :class:`ServiceError`'s own status),
never from the message text.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from ..errors import PhototagError

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:phototag:problem:"

#: One title per problem type (RFC 9457: "SHOULD NOT change from occurrence to occurrence").
TITLES = {
    "bad_image": "The image cannot be used",
    "bad_request": "Malformed request",
    "busy": "The server is busy",
    "cross_origin": "Cross-origin write refused",
    "feedback_disabled": "Feedback is off on this server",
    "internal_error": "The server failed",
    "invalid_host": "Unknown host name",
    "invalid_request": "Invalid request",
    "length_required": "Content-Length required",
    "method_not_allowed": "Method not allowed",
    "model_error": "The model cannot be used",
    "not_found": "Not found",
    "not_installed": "A needed package is not installed",
    "payload_too_large": "Upload too large",
    "request_timeout": "The request body came too slowly",
    "too_many_files": "Too many images",
    "too_many_pixels": "Too many pixels",
    "unauthorized": "Token required",
    "unavailable": "Not available on this server",
    "unknown_image": "Unknown stored image",
    "unknown_language": "Unknown keyword language",
    "unsupported_media_type": "Not an accepted image type",
}


class ServiceError(PhototagError):
    """A refusal by the service itself (limits, token, host checks): its status and code are given where raised."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.http_status, self.code, self.detail, self.headers = status, code, detail, headers


def problem(status: int, code: str, detail: str) -> dict[str, Any]:
    """The problem-details object for one occurrence."""
    try:
        fallback = HTTPStatus(status).phrase
    except ValueError:
        fallback = "Error"
    return {
        "type": TYPE_PREFIX + code,
        "title": TITLES.get(code, fallback),
        "status": status,
        "detail": detail,
        "code": code,
    }


def problem_of(err: PhototagError, detail: str | None = None) -> dict[str, Any]:
    """The problem for a phototag error: status and code from its class, ``detail`` defaulting to its message."""
    return problem(err.http_status, err.code, str(err) if detail is None else detail)


def as_service_error(err: PhototagError, detail: str | None = None) -> ServiceError:
    """``err`` as a :class:`ServiceError` with the same status and code (``detail`` replaces the message)."""
    if isinstance(err, ServiceError) and detail is None:
        return err
    return ServiceError(err.http_status, err.code, str(err) if detail is None else detail)

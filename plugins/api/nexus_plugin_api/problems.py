"""Errors as RFC 9457 ``application/problem+json``.

Every error the API answers has the same shape: the RFC's members (``type``,
``title``, ``status``, ``detail``, ``instance``) plus the core's
:class:`~nexus_core.errors.ErrorDetail` fields as extension members: ``code``,
``errors`` (each ``{"path": "address.zip", "reason": "..."}``), ``node``,
``suggestion``, ``retry_after``. A client (the CLI with ``--url``) rebuilds the
core error from them.
"""

from __future__ import annotations

import http
import logging
import math

import msgspec
from nexus_core.errors import (
    AuthenticationError,
    ErrorDetail,
    FieldError,
    IdempotencyConflict,
    InputLimitExceeded,
    NexusError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    ValidationError,
)

__all__ = [
    "PROBLEM_JSON",
    "Conflict",
    "InvalidJSON",
    "Problem",
    "Unsupported",
    "problem_body",
    "problem_from_detail",
    "problem_from_exception",
    "status_for",
]

log = logging.getLogger("nexus.api")

PROBLEM_JSON = "application/problem+json"
_TYPE_PREFIX = "urn:nexus:error:"
_encode = msgspec.json.Encoder().encode


class InvalidJSON(ValidationError):
    """The request body is not JSON (400); the field error's path is ``"body"``."""

    code = "invalid_json"

    def __init__(self, reason: str) -> None:
        super().__init__([FieldError(path="body", reason=f"invalid JSON: {reason}")])


class Conflict(NexusError):
    """The request conflicts with the resource's state (409)."""

    code = "conflict"


class Unsupported(NexusError):
    """The gateway is not set up to do what was asked (403), e.g. to issue CLI tokens."""

    code = "unsupported"


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem detail, with the core's error fields as extension members."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[FieldError] = []
    node: str | None = None
    suggestion: str | None = None
    retry_after: float | None = None


def _is_payload_size(exc: InputLimitExceeded) -> bool:
    limit = getattr(exc, "limit", None)
    if isinstance(limit, str):
        return limit in {"size", "payload", "payload_size", "max_payload_bytes", "bytes"}
    return any(not e.path and ("byte" in e.reason or "size" in e.reason) for e in exc.errors) or (
        "byte" in exc.message
    )


def status_for(exc: NexusError) -> int:
    """The HTTP status of a core error."""
    if isinstance(exc, InvalidJSON):
        return 400
    if isinstance(exc, InputLimitExceeded):
        return 413 if _is_payload_size(exc) else 422
    if isinstance(exc, ValidationError):
        return 422
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, (IdempotencyConflict, Conflict)):
        return 409
    if isinstance(exc, AuthenticationError):
        return 401
    if isinstance(exc, PermissionDenied | Unsupported):
        return 403
    if isinstance(exc, RateLimited):
        return 429
    if isinstance(exc, ServiceUnavailable):
        return 503
    return 400


def _title(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_from_detail(detail: ErrorDetail, status: int, instance: str | None = None) -> Problem:
    """Build the problem for a core :class:`ErrorDetail` answered with ``status``."""
    return Problem(
        type=_TYPE_PREFIX + detail.code,
        title=_title(status),
        status=status,
        detail=detail.message,
        code=detail.code,
        instance=instance,
        errors=detail.errors,
        node=detail.node,
        suggestion=detail.suggestion,
        retry_after=detail.retry_after,
    )


def problem_from_exception(
    exc: BaseException, instance: str | None = None
) -> tuple[Problem, dict[str, str]]:
    """The problem and the extra headers for any exception a handler raised.

    Core errors keep their code and fields; Litestar's HTTP exceptions (404 for
    an unknown route, 405, 413...) get a code from their status; anything else
    is a 500 whose detail says nothing of the internals (it is logged).
    """
    headers: dict[str, str] = {}
    if isinstance(exc, NexusError):
        status = status_for(exc)
        problem = problem_from_detail(exc.detail(), status, instance)
        if isinstance(exc, AuthenticationError):
            headers["WWW-Authenticate"] = 'Bearer realm="nexus"'
        elif isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return problem, headers
    http_status: object = getattr(exc, "status_code", None)
    if isinstance(http_status, int) and 400 <= http_status < 600:
        status = http_status
        extra = getattr(exc, "headers", None) or {}
        headers.update({str(k): str(v) for k, v in dict(extra).items()})
        code = _HTTP_CODES.get(status, "http_error")
        message = str(getattr(exc, "detail", "") or _title(status))
        if status == 413:
            message = "the request body is over the size limit"
        elif status == 405 and "allow" in {k.lower() for k in headers}:
            allowed = next(v for k, v in headers.items() if k.lower() == "allow")
            message = f"method not allowed here; allowed: {allowed}"
        errors = [FieldError(path="body", reason=message)] if status == 413 else []
        detail = ErrorDetail(code=code, message=message, errors=errors)
        if status >= 500:
            log.error("error answering %s: %s", instance, exc, exc_info=exc)
        return problem_from_detail(detail, status, instance), headers
    log.exception("unexpected error answering %s", instance, exc_info=exc)
    detail = ErrorDetail(code="internal_error", message="internal server error")
    return problem_from_detail(detail, 500, instance), headers


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def problem_body(problem: Problem) -> bytes:
    """Encode a problem as JSON bytes."""
    return _encode(problem)

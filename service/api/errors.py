"""The API's errors and the handlers that turn every failure into `{"error": ..., "reason": ...}`.

Reasons are written for the caller; no token, key or secret is ever put into one.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("cvmfs.api")

_ERROR_NAMES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_request",
    429: "rate_limited",
    502: "bad_gateway",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    error: str
    reason: str


class ApiError(Exception):
    """An answer other than success; `reason` is safe to show the caller."""

    status_code = 400
    error = "bad_request"

    def __init__(self, reason: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers or {}


class BadRequest(ApiError):
    pass


class Unauthenticated(ApiError):
    status_code = 401
    error = "unauthenticated"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class Forbidden(ApiError):
    status_code = 403
    error = "forbidden"


class NotFound(ApiError):
    status_code = 404
    error = "not_found"


class Conflict(ApiError):
    status_code = 409
    error = "conflict"


class NotPublished(Conflict):
    error = "not_published"


class RateLimited(ApiError):
    status_code = 429
    error = "rate_limited"

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class BackendError(ApiError):
    """A service behind the API misbehaved (not the caller's fault, not transient)."""

    status_code = 502
    error = "bad_gateway"


class Unavailable(ApiError):
    """A service behind the API is down: retry later."""

    status_code = 503
    error = "unavailable"

    def __init__(self, reason: str, retry_after_s: int = 5) -> None:
        super().__init__(reason, headers={"Retry-After": str(retry_after_s)})


def error_response(
    status: int, error: str, reason: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        ErrorBody(error=error, reason=reason).model_dump(), status_code=status, headers=headers
    )


def _validation_reason(error: RequestValidationError) -> str:
    # Locations and messages only: echoing input values could echo a secret a caller sent.
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item.get("loc", ())) or "request"
        parts.append(f"{location}: {item.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)[:2000]


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status_code, exc.error, exc.reason, exc.headers)

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "invalid_request", _validation_reason(exc))

    async def on_http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = _ERROR_NAMES.get(exc.status_code, "error")
        reason = exc.detail if isinstance(exc.detail, str) else error.replace("_", " ")
        return error_response(exc.status_code, error, reason, dict(exc.headers or {}))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The type and route only: an exception's text may quote a secret.
        log.error(
            "event=api-internal-error method=%s path=%s error=%s",
            request.method,
            request.url.path,
            type(exc).__name__,
        )
        return error_response(
            500, "internal", "the service failed to answer this request; retry or report it"
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)

"""The API's errors: one JSON shape for every 4xx/5xx, `{"error": {"code": ..., "message": ...}}`.

`error_response` is the only place that builds it; below it, the handler of every exception type that
becomes one (`HANDLERS`, given to the app as a whole).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from vidfarm.lifecycle import Gone, Rejected, TooManyUploads
from vidfarm.storage import STORAGE_ERRNOS, StorageUnavailable

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 408: "timeout",
    413: "too_large", 415: "unsupported_media_type", 422: "invalid", 503: "unavailable",
}
# How long a client should wait before retrying when a dependency is away: Redis and the database
# come back in seconds (a restart, a failover), a full or read-only disk needs an operator.
RETRY_SOON_S = "5"
RETRY_LATER_S = "30"


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def internal_error() -> JSONResponse:
    """A bug: logged with its traceback, answered without one."""
    log.exception("unexpected error")
    return error_response(500, "internal", "internal error; the request was not applied")


class ApiError(Exception):
    """An error the API reports on purpose: raise it anywhere below a route."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def api_error(exc: Rejected) -> ApiError:
    """The core's refusal as this API answers it: the asker's fault, a 4xx."""
    if isinstance(exc, TooManyUploads):
        return ApiError(429, exc.code, exc.message, {"Retry-After": str(exc.retry_after_s)})
    return ApiError(404 if isinstance(exc, Gone) else 422, exc.code, exc.message)


async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
    return await _api_error(request, api_error(exc))


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Starlette's own 404s and 405s (no such route, wrong method) in our shape.
    return error_response(exc.status_code, HTTP_CODES.get(exc.status_code, "error"), str(exc.detail),
                          getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()
    )
    return error_response(422, "invalid_request", problems or "invalid request")


# Redis, the database or the disk being away is a 503 with a clear message, never a 500.


async def _redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
    log.warning("redis unavailable: %s", type(exc).__name__)
    return error_response(503, "redis_unavailable", "the queue (Redis) is unavailable; retry",
                          {"Retry-After": RETRY_SOON_S})


async def _database_down(_: Request, exc: SQLAlchemyError) -> JSONResponse:
    log.warning("database unavailable: %s", type(exc).__name__)
    return error_response(503, "database_unavailable", "the catalog database is unavailable; retry",
                          {"Retry-After": RETRY_SOON_S})


async def _storage_error(_: Request, exc: OSError) -> JSONResponse:
    # A full or read-only disk under an upload is the server's trouble, not a bug: say so.
    if exc.errno not in STORAGE_ERRNOS:
        return internal_error()
    log.warning("storage unavailable: %s", exc.strerror)
    return error_response(503, "storage_unavailable", f"storage error: {exc.strerror}; retry later",
                          {"Retry-After": RETRY_LATER_S})


async def _store_down(_: Request, exc: StorageUnavailable) -> JSONResponse:
    # The object store stayed unreachable or throttling through the client's own retries.
    log.warning("object store unavailable: %s", exc)
    return error_response(503, "storage_unavailable", "the object store is unavailable; retry",
                          {"Retry-After": RETRY_SOON_S})


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    return internal_error()


HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]] = {
    ApiError: _api_error,
    Rejected: _rejected,
    StarletteHTTPException: _http_error,
    RequestValidationError: _validation_error,
    redis.RedisError: _redis_down,
    SQLAlchemyError: _database_down,
    OSError: _storage_error,
    StorageUnavailable: _store_down,
    Exception: _unexpected,
}

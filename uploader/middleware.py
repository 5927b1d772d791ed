"""HTTP middleware of the API: a bound on header bytes, request latency for Prometheus, the tus version."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from uploader.errors import error_response
from vidfarm import metrics, tus

MAX_HEADER_BYTES = 32 * 1024

Next = Callable[[Request], Awaitable[Response]]


async def limit_header_size(request: Request, call_next: Next) -> Response:
    # `vidfarm api` runs h11, which refuses more than 64 KiB of headers before the app sees them
    # (see cli.api); below that, the app draws the line at 32 KiB with a clear JSON 431.
    size = sum(len(name) + len(value) for name, value in request.scope["headers"])
    if size > MAX_HEADER_BYTES:
        return error_response(431, "headers_too_large", f"request headers exceed {MAX_HEADER_BYTES} bytes")
    return await call_next(request)


async def observe_latency(request: Request, call_next: Next) -> Response:
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    metrics.HTTP_SECONDS.labels(
        request.method, getattr(route, "path", "unmatched"), str(response.status_code)
    ).observe(time.perf_counter() - started)
    return response


async def tus_resumable(request: Request, call_next: Next) -> Response:
    """tus clients look for the protocol version on every answer of the upload routes, errors included."""
    response = await call_next(request)
    if request.url.path.startswith("/v1/uploads"):
        response.headers.setdefault("Tus-Resumable", tus.VERSION)
    return response


# Outermost last: latency covers the whole request, the 431 included.
MIDDLEWARE = (tus_resumable, limit_header_size, observe_latency)

"""HTTP middleware of the API: a bound on header bytes, request latency for Prometheus, and the
headers some answers carry whatever route made them (tus's version, the player's CORS).

One plain ASGI layer, not Starlette's `BaseHTTPMiddleware`: that one hands every chunk of a request
body through a memory stream per layer, which cost the API about 1.7 s of CPU per GiB uploaded.
"""

from __future__ import annotations

import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from uploader import playback
from uploader.errors import error_response
from vidfarm import metrics, tus

MAX_HEADER_BYTES = 32 * 1024
TUS_PREFIX = "/v1/uploads"


class ApiMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_headers(scope["path"], MutableHeaders(scope=message))
                observe(scope, message["status"], started)
            await send(message)

        # `vidfarm api` runs h11, which refuses more than 64 KiB of headers before the app sees them
        # (see cli.api); below that, the app draws the line at 32 KiB with a clear JSON 431.
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            answer = error_response(431, "headers_too_large", f"request headers exceed {MAX_HEADER_BYTES} bytes")
            await answer(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def add_headers(path: str, headers: MutableHeaders) -> None:
    """On every answer under these paths, errors included: tus clients look for the protocol version
    on each, and a player can only read why a playback request failed with CORS headers."""
    if path.startswith(TUS_PREFIX):
        headers.setdefault("Tus-Resumable", tus.VERSION)
    if path.startswith(playback.PREFIX):
        headers.update(playback.CORS_HEADERS)


def observe(scope: Scope, status: int, started: float) -> None:
    """Time to the response's start (a stream's length is its client's business), by route template."""
    route = getattr(scope.get("route"), "path", "unmatched")
    metrics.HTTP_SECONDS.labels(scope["method"], route, str(status)).observe(time.perf_counter() - started)

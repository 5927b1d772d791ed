"""HTTP middleware of the API: bounds on header bytes and on bodies (uploader.bodies), request
latency for Prometheus, and the headers some answers carry whatever route made them (tus's version,
the player's CORS).

One plain ASGI layer, not Starlette's `BaseHTTPMiddleware`: that one hands every chunk of a request
body through a memory stream per layer, which cost the API about 1.7 s of CPU per GiB uploaded.
"""

from __future__ import annotations

import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from uploader import bodies, playback
from uploader.auth import KeyRing
from uploader.errors import ApiError, error_response
from vidfarm import metrics, tus
from vidfarm.settings import Settings

MAX_HEADER_BYTES = 32 * 1024
TUS_PREFIX = "/v1/uploads"
# Methods a metric names; any other token a client makes up is one label value, not a new series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ApiMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, keys: KeyRing) -> None:
        self.app = app
        self.settings = settings
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_headers(app_path(scope), MutableHeaders(scope=message))
                observe(scope, message["status"], started)
            await send(message)

        # `vidfarm api` runs h11, which refuses more than 64 KiB of headers before the app sees them
        # (see uploader/http11.py); below that, the app draws the line at 32 KiB with a clear JSON 431.
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            answer = error_response(431, "headers_too_large", f"request headers exceed {MAX_HEADER_BYTES} bytes")
            await answer(scope, receive, send_with_headers)
            return
        try:
            receive = await self.bounded_body(scope, receive)
        except ApiError as exc:
            # Refused before its body was read (or all of it): the connection goes, not the rest of it.
            answer = error_response(exc.status, exc.code, exc.message, {**(exc.headers or {}), "Connection": "close"})
            await answer(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    async def bounded_body(self, scope: Scope, receive: Receive) -> Receive:
        """`receive` for the app, once what the headers alone refuse is refused: a body from a caller
        without a valid key (no route takes one, and FastAPI would read and parse it before the key
        is checked), or a body other than an upload over `max_body_bytes`. Every body must keep up
        the rate floor; one that is not an upload is read whole here, within its limit."""
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        declared = None if length is None else bodies.count_header(length)
        if length is not None and declared is None:
            raise ApiError(400, "bad_request", "invalid Content-Length header")
        if not (declared or "transfer-encoding" in headers):
            return receive
        self.keys.tenant(headers.get("authorization"))
        settings = self.settings
        receive = bodies.paced(receive, bodies.RateFloor(settings.body_min_rate_bytes_s, settings.body_rate_window_s))
        if is_upload(scope):
            return receive  # streamed by its route, under the upload's own limits
        if declared is not None and declared > settings.max_body_bytes:
            raise bodies.body_too_large(settings.max_body_bytes)
        return await bodies.buffered(receive, settings.max_body_bytes, settings.upload_idle_timeout_s)


def is_upload(scope: Scope) -> bool:
    """The routes that stream a body of up to `max_upload_bytes` to storage."""
    method, path = scope["method"], app_path(scope)
    if method == "POST":
        return path in ("/v1/videos", TUS_PREFIX)
    return method == "PATCH" and path.startswith(TUS_PREFIX + "/")


def app_path(scope: Scope) -> str:
    """The path the routes see: behind a public URL with a path prefix (uploader/public_url.py) the
    scope's path carries the prefix as its `root_path`, which routing strips."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root + "/") else path


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
    method = scope["method"] if scope["method"] in METHODS else "other"
    metrics.HTTP_SECONDS.labels(method, route, str(status)).observe(time.perf_counter() - started)

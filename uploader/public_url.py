"""`VIDFARM_PUBLIC_URL`: where clients reach the API, the start of every URL it hands out.

Without it, URLs are built from the request (its `Host` header and scheme), which any client chooses:
a forged `Host: evil.example` would come back in video resources, playback and download links and the
tus `Location`. With it, each request is seen as addressed to the public URL before any route runs,
so every URL the API builds (and Starlette's own redirects) starts with it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send


class PublicUrl:
    """ASGI middleware: scheme, host and path prefix of each request from the configured public URL."""

    def __init__(self, app: ASGIApp, public_url: str) -> None:
        self.app = app
        parts = urlsplit(public_url)
        self.scheme = parts.scheme
        self.host = parts.netloc.encode("ascii")  # Settings refuses any other
        self.root_path = parts.path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(name, value) for name, value in scope["headers"] if name != b"host"]
            scope = {**scope, "scheme": self.scheme, "headers": [(b"host", self.host), *headers]}
            if self.root_path and scope.get("root_path") != self.root_path:
                # The proxy strips the public URL's path; ASGI's `path` includes the root path.
                raw_path = scope.get("raw_path") or scope["path"].encode()
                scope["root_path"] = self.root_path
                scope["path"] = self.root_path + scope["path"]
                scope["raw_path"] = self.root_path.encode() + raw_path
        await self.app(scope, receive, send)

"""Bounds on what a client sends, checked before and while the API reads it (docs/design.md, "Limits"):
numbers in headers, the size of a body that is not an upload, and the pace of every body.

Plain ASGI pieces, used by `uploader.middleware` before any route (or FastAPI's body parsing) runs.
"""

from __future__ import annotations

import asyncio
import re
import time

from starlette.types import Message, Receive

from uploader.errors import ApiError

# ASCII only, and short enough to be a size: `str.isdigit()` takes "²" or "٣", which `int()` then
# refuses or reads as another digit.
_COUNT = re.compile(r"[0-9]{1,20}")


def count_header(raw: str) -> int | None:
    """A byte count from a header (Content-Length, Upload-Length, Upload-Offset); None if it is not one."""
    raw = raw.strip()
    return int(raw) if _COUNT.fullmatch(raw) else None


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body is larger than the limit of {limit} bytes "
                    "(VIDFARM_MAX_BODY_BYTES); only uploads may be larger")


class RateFloor:
    """A body must bring at least `min_rate` bytes/s, averaged over each `window_s` spent waiting for it
    (the first window is the grace period; a fast window earns no credit for the next). Only time
    waiting on the client counts: while the API itself holds back (a slow store), the clock stops."""

    def __init__(self, min_rate: float, window_s: float) -> None:
        self.min_rate = min_rate
        self.window_s = window_s
        self.quota = min_rate * window_s
        self.waited = 0.0  # seconds of waiting in the current window
        self.got = 0  # bytes in the current window

    def patience(self) -> float | None:
        """How long the next wait may last before a window ends under its quota; None: no floor."""
        if self.quota <= 0:
            return None
        left = self.window_s - self.waited
        return left + self.window_s if self.got >= self.quota else left

    def record(self, waited: float, got: int) -> None:
        """`got` bytes after `waited` seconds: ApiError(408) once a window ended under its quota."""
        if self.quota <= 0:
            return
        self.waited += waited
        self.got += got
        while self.waited >= self.window_s:
            if self.got < self.quota:
                raise self.too_slow()
            self.waited -= self.window_s
            self.got = 0

    def too_slow(self) -> ApiError:
        # Connection: close, or the server would go on taking the trickle to drain the body.
        return ApiError(408, "body_too_slow", f"the request body arrived slower than {self.min_rate:g} bytes/s "
                        f"over {self.window_s:g} s; it was abandoned", {"Connection": "close"})


def paced(receive: Receive, floor: RateFloor) -> Receive:
    """`receive` under `floor` until the body's last chunk; what comes after (a disconnect) as is."""
    body_done = False

    async def next_message() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        started = time.monotonic()
        try:
            # asyncio.timeout, not wait_for: no task per chunk (a GiB upload is 16k chunks).
            async with asyncio.timeout(floor.patience()):
                message = await receive()
        except TimeoutError:  # the window ended under its quota (`patience` says when it would)
            raise floor.too_slow() from None
        if message["type"] != "http.request":
            body_done = True
            return message
        floor.record(time.monotonic() - started, len(message.get("body", b"")))
        body_done = not message.get("more_body", False)
        return message

    return next_message


async def buffered(receive: Receive, limit: int, idle_timeout_s: float) -> Receive:
    """The whole body, read now (at most `limit` bytes: ApiError 413 past it), replayed to the app.
    Only for small bodies: FastAPI would read them whole anyway, with no limit of its own."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(idle_timeout_s):
                message = await receive()
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"no request body received for {idle_timeout_s:g} s") from None
        if message["type"] != "http.request":  # the client left: the app hears it as it would have
            replay = [message]
            break
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(body)
        if not message.get("more_body", False):
            replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
            break

    async def replayed() -> Message:
        return replay.pop() if replay else await receive()

    return replayed

"""How `vidfarm api` speaks HTTP/1.1: uvicorn's h11 protocol, with a deadline on each request's headers.

uvicorn bounds the header bytes it buffers (`h11_max_incomplete_event_size`) but not the time they
take: a client that connects and sends nothing, or a header byte every few seconds (slowloris), holds
its connection forever. Here the headers of each request must be complete `header_timeout_s` after
the connection opens or the request's first byte arrives; else the client gets a 408 and the
connection closes. Bodies have their own bounds (uploader.bodies); an idle keep-alive connection has
uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

# A header flood stops at the parser, before the app sees the request (the app answers 431 above 32 KiB).
MAX_INCOMPLETE_EVENT_BYTES = 64 * 1024


def _timeout_answer(timeout_s: float) -> bytes:
    body = json.dumps({"error": {"code": "header_timeout",
                                 "message": f"the request headers took longer than {timeout_s:g} s"}}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body))


class HeaderDeadlineProtocol(H11Protocol):
    """H11Protocol whose headers must arrive within `header_timeout_s` (a class attribute: uvicorn
    builds one protocol per connection from the class alone)."""

    header_timeout_s: float = 20.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # the first bytes of the next request on a kept-alive connection
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            # h11 sends no answer before a request: this one is written as bytes.
            self.transport.write(_timeout_answer(self.header_timeout_s))
            self.transport.close()


def server_config(app: Any, header_timeout_s: float, **options: Any) -> uvicorn.Config:
    """uvicorn's config for the API. h11, not httptools: only h11 bounds the header bytes it buffers
    (httptools takes 100 MB of headers and more)."""
    protocol = type("ApiHttp11", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})
    return uvicorn.Config(app, http=protocol, h11_max_incomplete_event_size=MAX_INCOMPLETE_EVENT_BYTES,
                          **options)


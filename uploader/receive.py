"""Stream an upload body to storage in chunks: memory stays flat whatever the size (an object store's
writer says when to wait for parts in flight, so a fast client cannot outrun the store).

Two forms are accepted: multipart (`curl -F file=@movie.mp4`), parsed incrementally as the bytes
arrive, or a raw body with a video/* or application/octet-stream content type.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from uploader.bodies import count_header
from uploader.errors import ApiError
from vidfarm.storage import PartialUpload, StorageUnavailable, UploadWriter

MAX_FIELD_BYTES = 64 * 1024
# Form fields are held in memory: the limit is on all of them together (python-multipart bounds part
# headers itself), or a chunked body of many small fields would grow the API's memory without limit.
FILE_FIELD = "file"


@dataclass
class Received:
    filename: str
    size_bytes: int
    fields: dict[str, str] = field(default_factory=dict)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the upload is larger than the limit of {limit} bytes")


class _Sink:
    """Counts and writes file bytes, refusing to go past the size limit."""

    def __init__(self, out: UploadWriter, limit: int) -> None:
        self.out = out
        self.limit = limit
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise too_large(self.limit)
        self.out.write(data)


class _MultipartUpload:
    """Callbacks for python-multipart's streaming parser: the `file` part goes to the sink, other
    small fields are kept as text."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._headers: dict[str, str] = {}
        self._header_name = b""
        self._header_value = b""
        self._part_name: str | None = None
        self._part_is_file = False
        self._value = bytearray()
        self._field_bytes = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: setattr(self, "_header_name", self._header_name + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_header_value", self._header_value + d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._value = {}, bytearray()
        self._part_name, self._part_is_file = None, False

    def _header_end(self) -> None:
        self._headers[self._header_name.decode("latin-1").lower()] = self._header_value.decode("latin-1")
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", errors="replace")
        self._part_name = name
        if name == FILE_FIELD and self.filename is None:
            self._part_is_file = True
            self.filename = params.get(b"filename", b"upload").decode("utf-8", errors="replace") or "upload"
        elif b"filename" in params:
            # `curl -F video=@movie.mp4`: say where the file belongs instead of "field too large".
            raise ApiError(400, "missing_file", f"send the video in the form field {FILE_FIELD!r}, not {name!r}")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part_is_file:
            self.sink.write(data[start:end])
            return
        self._value += data[start:end]
        self._field_bytes += end - start
        if self._field_bytes > MAX_FIELD_BYTES:
            raise ApiError(400, "field_too_large", f"form field {self._part_name!r} is too large")

    def _part_end(self) -> None:
        if not self._part_is_file and self._part_name:
            self.fields[self._part_name] = self._value.decode("utf-8", errors="replace")


def check_declared_length(request: Request, allowed: int, limit: int) -> None:
    """Refuse before reading a body whose Content-Length says it is over `allowed` bytes (413 naming
    the `limit` the user knows of)."""
    raw = request.headers.get("content-length")
    if raw is None:
        return
    declared = count_header(raw)
    if declared is None:
        raise ApiError(400, "bad_request", "invalid Content-Length header")
    if declared > allowed:
        raise too_large(limit)


async def room(out: UploadWriter | PartialUpload) -> None:
    """Backpressure: while the writer has too much in flight, stop reading the body."""
    while (busy := out.room()) is not None:
        await asyncio.wrap_future(busy)


async def body_chunks(request: Request, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The body as it arrives. A client that sends nothing for `idle_timeout_s` is given up on: a dead
    peer is not always reported as a disconnect, and a trickling one would hold its slot forever."""
    body = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(body.__anext__(), idle_timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise ApiError(408, "upload_timeout",
                           f"no upload data received for {idle_timeout_s:g} s; the upload was abandoned") from exc
        yield chunk


def _content_type(request: Request) -> tuple[str, dict[bytes, bytes]]:
    """The body's type, checked before any storage is touched."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    content_type = content_type.decode("latin-1").lower()
    if content_type != "multipart/form-data" and not (
            content_type.startswith("video/") or content_type == "application/octet-stream"):
        raise ApiError(
            415, "unsupported_media_type",
            "send multipart/form-data with a 'file' field, or a raw body with a video/* or "
            f"application/octet-stream Content-Type (got {content_type or 'none'!r})",
        )
    return content_type, params


def check_upload_headers(request: Request, limit: int) -> None:
    """What can be refused from the headers alone, before any storage is touched."""
    check_declared_length(request, limit + MAX_FIELD_BYTES, limit)
    _content_type(request)


async def receive_upload(request: Request, out: UploadWriter, limit: int, idle_timeout_s: float = 60.0) -> Received:
    """The body into `out` (which the caller completes or aborts)."""
    check_declared_length(request, limit + MAX_FIELD_BYTES, limit)
    content_type, params = _content_type(request)
    sink = _Sink(out, limit)
    try:
        if content_type == "multipart/form-data":
            return await _receive_multipart(body_chunks(request, idle_timeout_s), sink, params.get(b"boundary"))
        async for chunk in body_chunks(request, idle_timeout_s):
            sink.write(chunk)
            await room(out)
        return Received(request.query_params.get("filename") or "upload", sink.size)
    except ClientDisconnect as exc:
        raise ApiError(400, "incomplete_upload", "the client disconnected before the upload finished") from exc


async def _receive_multipart(body: AsyncIterator[bytes], sink: _Sink, boundary: bytes | None) -> Received:
    if not boundary:
        raise ApiError(400, "bad_request", "multipart body without a boundary")
    upload = _MultipartUpload(sink)
    parser = MultipartParser(boundary, upload.callbacks())
    try:
        async for chunk in body:
            parser.write(chunk)
            await room(sink.out)
        parser.finalize()
    except (ApiError, OSError, StorageUnavailable):
        raise  # our own limits, or the disk (full, read-only): not the client's malformed body
    except Exception as exc:  # python-multipart raises its own errors on malformed bodies
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from exc
    if upload.filename is None:
        raise ApiError(400, "missing_file", "the multipart body has no 'file' field")
    return Received(upload.filename, sink.size, upload.fields)

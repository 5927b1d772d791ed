"""Resumable uploads: tus 1.0.0 at `/v1/uploads`, with the creation, creation-with-upload, termination,
expiration and checksum extensions (docs/design.md, "Resumable uploads").

An upload is a video in status `uploading` under the same id; its bytes live in the storage dir
(`vidfarm.tus`), so any API replica takes the next PATCH. The last byte hands the file to
`vidfarm.lifecycle.admit`, the path every upload takes to become a queued video.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from uploader.bodies import count_header
from uploader.deps import FarmDep, OwnedVideo, Tenant
from uploader.errors import ApiError, api_error
from uploader.receive import body_chunks, too_large
from uploader.receive import room as _room
from uploader.resources import ERRORS
from vidfarm import lifecycle, tus
from vidfarm.catalog import VideoRow
from vidfarm.farm import Farm
from vidfarm.settings import Settings
from vidfarm.states import VideoStatus
from vidfarm.storage import SourceHandle

EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
CHECKSUMS: dict[str, Callable[[], Any]] = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}
OFFSET_TYPE = "application/offset+octet-stream"
UPLOADING = VideoStatus.UPLOADING


def _version(tus_resumable: Annotated[str | None, Header()] = None) -> None:
    if tus_resumable != tus.VERSION:
        raise ApiError(412, "unsupported_version", f"this server speaks tus {tus.VERSION}: send "
                       f"'Tus-Resumable: {tus.VERSION}'", {"Tus-Version": tus.VERSION})


router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=ERRORS)
SPEAKS_TUS = [Depends(_version)]


@router.options("", status_code=204, response_class=Response)
@router.options("/{video_id}", status_code=204, response_class=Response)
def capabilities(farm: FarmDep) -> Response:
    return Response(status_code=204, headers={
        "Tus-Version": tus.VERSION, "Tus-Extension": EXTENSIONS, "Tus-Max-Size": str(farm.settings.max_upload_bytes),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
    })


@router.post("", status_code=201, response_class=Response, dependencies=SPEAKS_TUS)
async def create_upload(request: Request, tenant: Tenant, farm: FarmDep) -> Response:
    """Upload-Length, and Upload-Metadata `filename`, `renditions`, `queue`, `quality` (as a regular
    upload's fields)."""
    length = _upload_length(request.headers.get("upload-length"), farm.settings.max_upload_bytes)
    video = await run_in_threadpool(_create, farm, tenant, length, _metadata(request.headers.get("upload-metadata")))
    named = {"Location": str(request.url_for("resume_upload", video_id=video["id"])), "Vidfarm-Video-Id": video["id"]}
    received = 0
    try:
        if length == 0 or _content_type(request) == OFFSET_TYPE:  # creation-with-upload
            received = await _receive(request, farm, video, 0)
    except ApiError as exc:  # the upload exists all the same: say where, so the client can resume it
        exc.headers = {**(exc.headers or {}), **named}
        raise
    return Response(status_code=201, headers={**named, **_progress(received, length, farm.settings)})


@router.head("/{video_id}", response_class=Response, dependencies=SPEAKS_TUS)
async def upload_offset(video: OwnedVideo, farm: FarmDep) -> Response:
    _resumable(video, farm.settings)
    headers = {"Upload-Length": str(video["size_bytes"]), "Cache-Control": "no-store"}
    if video["status"] != UPLOADING:  # complete: the video took its own way since
        return Response(status_code=200, headers={**headers, "Upload-Offset": str(video["size_bytes"])})
    received = await run_in_threadpool(farm.storage.resumable_offset, video["id"])
    if received is None:
        raise ApiError(410, "upload_gone", f"upload {video['id']} has no data any more")
    if received == video["size_bytes"]:  # the request that brought the last byte died before admitting it
        await _admit_stranded(farm, video)
    return Response(status_code=200, headers={
        **headers, "Upload-Offset": str(received),
        "Upload-Expires": tus.http_date(tus.expires_at(video, farm.settings.tus_expiry_s)),
    })


@router.patch("/{video_id}", status_code=204, response_class=Response, dependencies=SPEAKS_TUS)
async def resume_upload(request: Request, video: OwnedVideo, farm: FarmDep) -> Response:
    _resumable(video, farm.settings)
    if _content_type(request) != OFFSET_TYPE:
        raise ApiError(415, "unsupported_media_type", f"a PATCH body must be {OFFSET_TYPE}")
    offset = _offset_header(request.headers.get("upload-offset"))
    if video["status"] != UPLOADING:  # complete: only a repeat of the last PATCH's end is consistent
        _at_offset(video["size_bytes"], offset)
        return Response(status_code=204, headers={"Upload-Offset": str(offset)})
    received = await _receive(request, farm, video, offset)
    return Response(status_code=204, headers=_progress(received, video["size_bytes"], farm.settings))


@router.delete("/{video_id}", status_code=204, response_class=Response, dependencies=SPEAKS_TUS)
def terminate_upload(video: OwnedVideo, farm: FarmDep) -> Response:
    """No lock: termination wins over a PATCH in flight, whose end then finds the row canceled."""
    _resumable(video, farm.settings)
    if video["status"] != UPLOADING:
        raise ApiError(409, "upload_complete", f"upload {video['id']} is complete; delete the video with "
                       f"DELETE /v1/videos/{video['id']}")
    lifecycle.cancel(farm, video, only_if=UPLOADING)
    return Response(status_code=204)


# -- creation -------------------------------------------------------------------------------------


def _create(farm: Farm, tenant: str, length: int, meta: dict[str, str]) -> VideoRow:
    """The row first names what was asked, checked as for a regular upload (422 now, not after 20 GiB)."""
    filename = meta.get("filename") or meta.get("name") or "upload"  # `name`: Uppy's key
    return lifecycle.open_upload(farm, tenant, length, filename, meta.get("renditions"), meta.get("queue"),
                                 meta.get("quality"))


def _upload_length(raw: str | None, limit: int) -> int:
    length = None if raw is None else count_header(raw)
    if length is None:
        raise ApiError(400, "bad_upload_length", "send Upload-Length: the size of the whole upload in bytes")
    if length > limit:
        raise too_large(limit)
    return length


def _metadata(raw: str | None) -> dict[str, str]:
    """`key base64(value)` pairs separated by commas; a key alone has the empty value."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (raw or "").split(","))):
        key, _, value = item.partition(" ")
        try:
            pairs[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, non-ASCII text, UnicodeDecodeError: all ValueErrors
            raise ApiError(400, "bad_metadata", f"Upload-Metadata {key!r}: the value is not base64 of UTF-8 text"
                           ) from None
    return pairs


# -- receiving ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checksum:
    algorithm: Callable[[], Any]
    digest: bytes


async def _receive(request: Request, farm: Farm, video: VideoRow, offset: int) -> int:
    """Append the body at `offset` while holding the upload's lease; the last byte admits the video.
    Returns the new offset."""
    expected = _checksum(request.headers.get("upload-checksum"))
    async with _writing(farm, video["id"], all_or_nothing=expected is not None) as writer:
        _at_offset(writer.offset, offset)
        await _append(request, writer, video["size_bytes"] - offset, expected, farm.settings.upload_idle_timeout_s)
        await _admit_if_whole(farm, video, writer)
    return writer.offset


@contextlib.asynccontextmanager
async def _writing(farm: Farm, video_id: str, *, all_or_nothing: bool) -> AsyncIterator[tus.Writer]:
    """The upload, held by this request (423 while another holds it, 410 once it is gone)."""
    try:
        writer = await run_in_threadpool(partial(tus.Writer, farm, video_id, all_or_nothing=all_or_nothing))
    except tus.UploadBusy:
        raise ApiError(423, "upload_locked", "another request is writing to this upload; retry after it ends",
                       {"Retry-After": "1"}) from None
    except FileNotFoundError:
        raise ApiError(410, "upload_gone", f"upload {video_id} has no data any more") from None
    try:
        yield writer
    finally:
        with anyio.CancelScope(shield=True):  # a request cut off mid-body keeps what arrived too
            received = await run_in_threadpool(writer.close)
            if received is not None and not writer.finished:  # kept bytes show, and move the expiry
                await _record(farm, video_id, received)
    if received is None:  # the lease ran out under this request, unnoticed until its end
        raise _taken_over()


def _taken_over() -> ApiError:
    """This request stalled past its lease and another took the upload over: it stored nothing more."""
    return ApiError(423, "upload_locked", "another request took this upload over; HEAD says where it is",
                    {"Retry-After": "1"})


async def _record(farm: Farm, video_id: str, received: int) -> None:
    if not await run_in_threadpool(farm.catalog.update, video_id, expect={"status": UPLOADING},
                                   received_bytes=received):
        # Terminated while this request wrote: what it stored after the removal goes too.
        await run_in_threadpool(farm.storage.delete_video, video_id)


async def _admit_stranded(farm: Farm, video: VideoRow) -> None:
    try:
        async with _writing(farm, video["id"], all_or_nothing=True) as writer:
            await _admit_if_whole(farm, video, writer)
    except ApiError as exc:
        if exc.status != 423:  # 423: being admitted right now
            raise


async def _admit_if_whole(farm: Farm, video: VideoRow, writer: tus.Writer) -> None:
    if writer.offset == video["size_bytes"]:
        await _complete(farm, video, await run_in_threadpool(writer.finish))


async def _append(request: Request, writer: tus.Writer, room: int, expected: Checksum | None,
                  idle_timeout_s: float) -> None:
    """Stream the body into the upload, chunk by chunk (memory stays flat), renewing the lease as it
    goes. Without a checksum, what arrived before a disconnect is kept: that is what makes the upload
    resumable."""
    start = writer.offset
    digest = expected.algorithm() if expected else None
    try:
        async for chunk in body_chunks(request, idle_timeout_s):
            # Before anything else: a client that stalled past the lease may have been taken over.
            if writer.renew_due() and not await run_in_threadpool(writer.renew):
                raise _taken_over()
            if writer.offset - start + len(chunk) > room:
                raise ApiError(413, "too_large", f"the body goes past Upload-Length ({room} bytes left)")
            writer.partial.append(chunk)
            if digest is not None:
                digest.update(chunk)
            await _room(writer.partial)
        if expected is not None and digest is not None and digest.digest() != expected.digest:
            raise ApiError(460, "checksum_mismatch", "the body does not match Upload-Checksum; it was discarded")
    except BaseException as exc:
        # A checksummed chunk is all or nothing; a body longer than the upload is nothing.
        if expected is not None or getattr(exc, "status", None) == 413:
            writer.reject()
        if isinstance(exc, ClientDisconnect):
            raise ApiError(400, "incomplete_upload", "the client disconnected; HEAD says where to resume") from exc
        raise


async def _complete(farm: Farm, video: VideoRow, stored: SourceHandle) -> None:
    """The last byte arrived: from here on the upload goes the way of every upload."""
    try:
        await run_in_threadpool(lifecycle.complete_upload, farm, video, stored)
    except lifecycle.Rejected as exc:  # as an ApiError: the creation's answer adds where the upload is
        raise api_error(exc) from exc


def _checksum(raw: str | None) -> Checksum | None:
    if raw is None:
        return None
    name, _, value = raw.strip().partition(" ")
    if name.lower() not in CHECKSUMS:
        raise ApiError(400, "unsupported_checksum", f"checksum algorithm {name!r} is not one of {', '.join(CHECKSUMS)}")
    try:
        return Checksum(CHECKSUMS[name.lower()], base64.b64decode(value.strip(), validate=True))
    except ValueError:  # binascii's, and non-ASCII text
        raise ApiError(400, "bad_checksum", "Upload-Checksum: the value is not base64") from None


# -- state ----------------------------------------------------------------------------------------


def _resumable(video: VideoRow, settings: Settings) -> None:
    """A terminated upload is gone (404); an expired one says so (410)."""
    if video["status"] == VideoStatus.CANCELED:
        raise ApiError(404, "not_found", f"no upload with id {video['id']!r}")
    lapsed = video["status"] == UPLOADING and tus.expired(video, settings.tus_expiry_s)
    if lapsed or video["error_code"] == tus.EXPIRED:
        raise ApiError(410, tus.EXPIRED, f"upload {video['id']} expired; start a new one")


def _offset_header(raw: str | None) -> int:
    offset = None if raw is None else count_header(raw)
    if offset is None:
        raise ApiError(400, "bad_upload_offset", "send Upload-Offset: where this body starts, in bytes")
    return offset


def _at_offset(actual: int, claimed: int) -> None:
    if actual != claimed:
        raise ApiError(409, "offset_mismatch", f"the upload is at offset {actual}, not {claimed}; resume from there",
                       {"Upload-Offset": str(actual)})


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _progress(received: int, length: int, settings: Settings) -> dict[str, str]:
    headers = {"Upload-Offset": str(received)}
    if received < length:  # this request just wrote, so the sliding expiry starts again now
        headers["Upload-Expires"] = tus.http_date(datetime.now(UTC) + timedelta(seconds=settings.tus_expiry_s))
    return headers

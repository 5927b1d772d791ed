"""`POST /v1/videos`: receive, probe, record and queue one upload.

`admit` is the path from a stored file to a queued video; resumable uploads (`tus.py`) take it too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import redis
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import SQLAlchemyError

from uploader.deps import FarmDep, Tenant
from uploader.errors import ApiError
from uploader.receive import Received, check_upload_headers, receive_upload
from uploader.resources import ERRORS, VideoOut, video_resource
from vidfarm import metrics, presence
from vidfarm.catalog import VideoRow
from vidfarm.farm import Farm
from vidfarm.jobs import enqueue_graph, new_job_id, plan_tasks, total_frames
from vidfarm.probe import ProbeError, SourceInfo, probe
from vidfarm.settings import Settings
from vidfarm.states import VideoStatus
from vidfarm.storage import SourceHandle, Storage, StorageUnavailable, new_video_id

log = logging.getLogger(__name__)

router = APIRouter(tags=["videos"], responses=ERRORS)

# The body is read as a stream (see receive.py), so FastAPI cannot derive its schema: document it here.
_UPLOAD_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "renditions": {"type": "string", "description": "comma-separated rungs, e.g. 720p"},
                        "queue": {"type": "string", "description": "queue (worker pool), e.g. gpu"},
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "video/mp4": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {"name": "filename", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "original filename, for raw bodies"},
        {"name": "renditions", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "queue", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "queue (worker pool) to run on, e.g. gpu; default VIDFARM_DEFAULT_QUEUE"},
    ],
}


@router.post("/v1/videos", status_code=201, response_model=VideoOut, openapi_extra=_UPLOAD_BODY_DOC)
async def upload_video(request: Request, tenant: Tenant, farm: FarmDep) -> dict[str, Any]:
    started = time.perf_counter()
    settings = farm.settings
    try:
        check_upload_headers(request, settings.max_upload_bytes)  # before anything is recorded or stored
    except ApiError:
        metrics.UPLOADS.labels("rejected").inc()
        raise
    video_id = await run_in_threadpool(_record_intent, farm, tenant)
    try:
        async with _announced(farm, video_id):  # until admitted: a long probe is no sign of death either
            received, stored = await _store_body(request, farm, video_id)
            video = await admit(farm, Upload(
                video_id=video_id, tenant=tenant, filename=received.filename, size_bytes=received.size_bytes,
                renditions=_form_or_query(request, received, "renditions"),
                queue=_form_or_query(request, received, "queue"),
            ), stored, was=VideoStatus.RECEIVING)
    except BaseException:
        with anyio.CancelScope(shield=True):  # a cancelled request cleans up too
            await run_in_threadpool(withdrawn, farm, video_id)
        raise
    metrics.UPLOAD_SECONDS.observe(time.perf_counter() - started)
    return video_resource(video, str(request.base_url), settings)


# What only the probe can say; the row of an upload still arriving needs a value in these columns.
NOT_PROBED = {"duration_s": 0.0, "width": 0, "height": 0, "fps": 0.0, "video_codec": ""}


def _record_intent(farm: Farm, tenant: str) -> str:
    """The row (`receiving`) before the first byte is stored: whatever lands in storage then has a row
    saying whose it is, and the reconciler removes it only on that row's word (docs/design.md)."""
    video_id = new_video_id()
    farm.catalog.create(id=video_id, tenant=tenant, status=VideoStatus.RECEIVING, progress=0.0, attempts=0,
                        filename="upload", size_bytes=0, queue=farm.settings.default_queue, has_poster=0,
                        **NOT_PROBED)
    return video_id


@dataclass(frozen=True)
class Upload:
    """A file that has fully arrived in storage, and what was asked of it."""

    video_id: str
    tenant: str
    filename: str
    size_bytes: int
    renditions: str | None
    queue: str | None


async def admit(farm: Farm, upload: Upload, stored: SourceHandle, *, was: VideoStatus | None = None) -> VideoRow:
    """The one way an upload becomes a video, for `POST /v1/videos` and a tus upload's last PATCH alike:
    check what was asked, probe the file, move it into its video folder, record the video as queued with
    its task graph (filling in the `was` row: `receiving` for a POST, `uploading` for tus), queue it.

    Raises ApiError (422 for a file that is not a video we accept); the caller removes what is left."""
    settings, storage = farm.settings, farm.storage
    wanted = renditions_asked(upload.renditions, settings.ladder)
    queue = queue_asked(upload.queue, settings)
    try:
        source = await run_in_threadpool(probe, stored, max_duration_s=settings.max_duration_s,
                                         max_pixels=settings.max_pixels)
    except ProbeError as exc:
        raise ApiError(422, exc.code, exc.message) from exc
    await run_in_threadpool(storage.promote_upload, upload.video_id)
    fields = {
        "tenant": upload.tenant, "status": VideoStatus.QUEUED, "progress": 0.0, "attempts": 0,
        "filename": printable(upload.filename), "size_bytes": upload.size_bytes, **_source_columns(source),
        "queue": queue, "job_id": new_job_id(upload.video_id), "requested": wanted, "has_poster": 0,
        "tasks": plan_tasks(upload.video_id, source.duration_s, source.fps, source.has_audio, settings.chunk_seconds),
    }
    if was is None:
        video = await run_in_threadpool(partial(farm.catalog.create, id=upload.video_id, **fields))
    else:
        video = await run_in_threadpool(partial(farm.catalog.fill, upload.video_id, was=was, **fields))
    if video is None:
        raise ApiError(404, "not_found", f"upload {upload.video_id} was terminated or expired before it completed")
    await run_in_threadpool(_enqueue_or_defer, farm, video)
    metrics.UPLOADS.labels("accepted").inc()
    metrics.UPLOAD_BYTES.inc(upload.size_bytes)
    return video


async def _store_body(request: Request, farm: Farm, video_id: str) -> tuple[Received, SourceHandle]:
    """The body into storage (a file, or an S3 multipart upload), stored whole before it is probed."""
    settings = farm.settings
    writer = await run_in_threadpool(farm.storage.begin_upload, video_id)
    try:
        received = await receive_upload(request, writer, settings.max_upload_bytes, settings.upload_idle_timeout_s)
        return received, await run_in_threadpool(writer.complete)
    except BaseException:
        writer.abort()
        raise


@contextlib.asynccontextmanager
async def _announced(farm: Farm, video_id: str) -> AsyncIterator[None]:
    """Until the upload is admitted or refused, a key in Redis says that this API still receives it: on
    a slow link an S3 part (8 MiB or more) can take longer to fill than the reconciler waits before it
    removes a `receiving` upload as abandoned, and a long probe writes nothing either. Redis being
    away only costs that protection."""
    every_s = farm.settings.upload_idle_timeout_s / 2

    async def beat_forever() -> None:
        while True:
            try:
                await run_in_threadpool(presence.upload_beat, farm.redis, video_id, farm.settings.upload_idle_timeout_s)
            except redis.RedisError as exc:
                log.warning("upload %s: could not announce it in Redis: %s", video_id, exc)
            await asyncio.sleep(every_s)

    beating = asyncio.create_task(beat_forever())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(redis.RedisError):  # nobody receives it any more: its row decides
            await run_in_threadpool(presence.upload_done, farm.redis, video_id)


def _form_or_query(request: Request, received: Received, name: str) -> str | None:
    """A multipart field, or for a raw body the query parameter of the same name."""
    return received.fields.get(name) or request.query_params.get(name)


def _source_columns(source: SourceInfo) -> dict[str, Any]:
    return {
        "duration_s": source.duration_s, "width": source.width, "height": source.height, "fps": source.fps,
        "video_codec": source.video_codec, "audio_codec": source.audio_codec,
        "interlaced": int(source.interlaced), "hdr_transfer": source.hdr_transfer,
        "start_s": source.start_s, "file_start_s": source.file_start_s,
        "total_frames": total_frames(source.duration_s, source.fps),
    }


def renditions_asked(raw: str | None, ladder: tuple[str, ...]) -> list[str] | None:
    if not raw:
        return None
    wanted = [r.strip() for r in raw.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ladder]
    if unknown or not wanted:
        raise ApiError(422, "unknown_rendition",
                       f"unknown rendition {', '.join(unknown) or raw!r}; choose from {', '.join(ladder)}")
    return sorted(set(wanted), key=ladder.index)


def queue_asked(raw: str | None, settings: Settings) -> str:
    """Which pool runs the video (e.g. `gpu` for NVENC workers); the configured default otherwise."""
    try:
        return settings.queue_for(raw)
    except ValueError as exc:
        raise ApiError(422, "unknown_queue", str(exc)) from None


def printable(filename: str) -> str:
    """Kept only as metadata; strip control characters and path parts so it displays safely."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in name if ch.isprintable())[:255]
    return cleaned or "upload"


def withdrawn(farm: Farm, video_id: str) -> None:
    """A POST that did not become a video (refused, cut off, the store failing): its media goes, then
    its `receiving` row, which nobody was given the id of. A row that moved on (admitted just before a
    cancel) is a video now and keeps its media. What cannot be removed now keeps its row, and the
    reconciler removes both once the upload is idle past its timeout."""
    try:
        video = farm.catalog.get(video_id, cached=False)
    except SQLAlchemyError as exc:
        log.warning("upload %s not withdrawn now (the catalog failed: %s); the reconciler will", video_id, exc)
        return
    if video is None or video["status"] != VideoStatus.RECEIVING:
        return
    metrics.UPLOADS.labels("rejected").inc()
    if _remove_media(farm.storage, video_id):
        with contextlib.suppress(SQLAlchemyError):
            farm.catalog.forget(video_id, was=VideoStatus.RECEIVING)


def rejected(storage: Storage, video_id: str) -> None:
    """Count the rejection; nothing is left behind for it."""
    metrics.UPLOADS.labels("rejected").inc()
    _remove_media(storage, video_id)


def _remove_media(storage: Storage, video_id: str) -> bool:
    try:
        storage.delete_video(video_id)
        return True
    except OSError as exc:  # a read-only disk: nothing could have been written there either
        log.warning("could not remove rejected upload %s: %s", video_id, exc.strerror)
    except StorageUnavailable as exc:  # the store is down: its lifecycle rule and the reconciler clean up
        log.warning("could not remove rejected upload %s: %s", video_id, exc)
    return False


def _enqueue_or_defer(farm: Farm, video: VideoRow) -> None:
    try:
        enqueue_graph(farm.rq_redis, farm.settings, video, farm.catalog.tasks(video["id"]))
        metrics.JOBS_ENQUEUED.labels(video["queue"]).inc()
    except redis.RedisError as exc:
        # The catalog row is written, so the video is accepted: the reconciler queues it once
        # Redis is back. Failing the request now would make the client upload it twice.
        log.warning("video %s accepted but not queued yet (%s); the reconciler will queue it",
                    video["id"], type(exc).__name__)

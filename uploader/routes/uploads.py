"""`POST /v1/videos`: receive, probe, record and queue one upload."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from uploader.deps import FarmDep, Tenant
from uploader.errors import ApiError
from uploader.receive import Received, receive_upload
from uploader.resources import ERRORS, VideoOut, video_resource
from vidfarm import metrics
from vidfarm.catalog import VideoRow
from vidfarm.farm import Farm
from vidfarm.jobs import enqueue_graph, new_job_id, plan_tasks, total_frames
from vidfarm.probe import ProbeError, SourceInfo, probe
from vidfarm.settings import Settings
from vidfarm.states import VideoStatus
from vidfarm.storage import Storage, new_video_id

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
    video_id = new_video_id()
    try:
        video, received = await _accept(request, farm, tenant, video_id)
    except ProbeError as exc:
        _rejected(farm.storage, video_id)
        raise ApiError(422, exc.code, exc.message) from exc
    except BaseException:
        _rejected(farm.storage, video_id)
        raise
    await run_in_threadpool(_enqueue_or_defer, farm, video)
    metrics.UPLOADS.labels("accepted").inc()
    metrics.UPLOAD_BYTES.inc(received.size_bytes)
    metrics.UPLOAD_SECONDS.observe(time.perf_counter() - started)
    return video_resource(video, str(request.base_url), farm.settings)


async def _accept(request: Request, farm: Farm, tenant: str, video_id: str) -> tuple[VideoRow, Received]:
    """Store the body, check what was asked and what arrived, then record the video as queued."""
    settings, storage = farm.settings, farm.storage
    incoming = storage.incoming_path(video_id)
    received = await receive_upload(request, incoming, settings.max_upload_bytes, settings.upload_idle_timeout_s)
    wanted = _renditions(_form_or_query(request, received, "renditions"), settings.ladder)
    queue = _queue(_form_or_query(request, received, "queue"), settings)
    source = await run_in_threadpool(probe, incoming, max_duration_s=settings.max_duration_s,
                                     max_pixels=settings.max_pixels)
    await run_in_threadpool(storage.promote_upload, video_id)
    video = await run_in_threadpool(
        farm.catalog.create,
        id=video_id, tenant=tenant, status=VideoStatus.QUEUED, progress=0.0, attempts=0,
        filename=_printable(received.filename), size_bytes=received.size_bytes, **_source_columns(source),
        queue=queue, job_id=new_job_id(video_id), requested=wanted, has_poster=0,
        tasks=plan_tasks(video_id, source.duration_s, source.fps, source.has_audio, settings.chunk_seconds),
    )
    return video, received


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


def _renditions(raw: str | None, ladder: tuple[str, ...]) -> list[str] | None:
    if not raw:
        return None
    wanted = [r.strip() for r in raw.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ladder]
    if unknown or not wanted:
        raise ApiError(422, "unknown_rendition",
                       f"unknown rendition {', '.join(unknown) or raw!r}; choose from {', '.join(ladder)}")
    return sorted(set(wanted), key=ladder.index)


def _queue(raw: str | None, settings: Settings) -> str:
    """Which pool runs the video (e.g. `gpu` for NVENC workers); the configured default otherwise."""
    try:
        return settings.queue_for(raw)
    except ValueError as exc:
        raise ApiError(422, "unknown_queue", str(exc)) from None


def _printable(filename: str) -> str:
    """Kept only as metadata; strip control characters and path parts so it displays safely."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in name if ch.isprintable())[:255]
    return cleaned or "upload"


def _rejected(storage: Storage, video_id: str) -> None:
    """Count the rejection; nothing is left behind for it."""
    metrics.UPLOADS.labels("rejected").inc()
    try:
        storage.delete_video(video_id)
    except OSError as exc:  # a read-only disk: nothing could have been written there either
        log.warning("could not remove rejected upload %s: %s", video_id, exc.strerror)


def _enqueue_or_defer(farm: Farm, video: VideoRow) -> None:
    try:
        enqueue_graph(farm.rq_redis, farm.settings, video, farm.catalog.tasks(video["id"]))
        metrics.JOBS_ENQUEUED.labels(video["queue"]).inc()
    except redis.RedisError as exc:
        # The catalog row is written, so the video is accepted: the reconciler queues it once
        # Redis is back. Failing the request now would make the client upload it twice.
        log.warning("video %s accepted but not queued yet (%s); the reconciler will queue it",
                    video["id"], type(exc).__name__)

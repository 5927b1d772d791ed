"""`POST /v1/videos`: receive one upload into storage, then hand it to `vidfarm.lifecycle.admit`, the
path from a stored file to a queued video that resumable uploads (`tus.py`) take too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import redis
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from uploader.deps import FarmDep, Tenant
from uploader.errors import ApiError
from uploader.receive import Received, check_upload_headers, receive_upload
from uploader.resources import ERRORS, VideoOut, video_resource
from vidfarm import lifecycle, metrics, presence
from vidfarm.farm import Farm
from vidfarm.states import VideoStatus
from vidfarm.storage import SourceHandle

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
                        "quality": {"type": "string", "enum": ["full", "sampled"],
                                    "description": "full: VMAF of every frame (default: sampled)"},
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
        {"name": "quality", "in": "query", "required": False, "schema": {"type": "string", "enum": ["full", "sampled"]},
         "description": "full: score every frame of every rendition (default: sampled)"},
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
    video_id = await run_in_threadpool(lifecycle.receive, farm, tenant)
    try:
        async with _announced(farm, video_id):  # until admitted: a long probe is no sign of death either
            received, stored = await _store_body(request, farm, video_id)
            upload = lifecycle.Upload(
                video_id=video_id, tenant=tenant, filename=received.filename, size_bytes=received.size_bytes,
                renditions=_form_or_query(request, received, "renditions"),
                queue=_form_or_query(request, received, "queue"),
                quality=_form_or_query(request, received, "quality"),
            )
            video = await run_in_threadpool(partial(lifecycle.admit, farm, upload, stored, was=VideoStatus.RECEIVING))
    except BaseException:
        with anyio.CancelScope(shield=True):  # a cancelled request cleans up too
            await run_in_threadpool(lifecycle.withdraw, farm, video_id)
        raise
    metrics.UPLOAD_SECONDS.observe(time.perf_counter() - started)
    return video_resource(video, str(request.base_url), settings)


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

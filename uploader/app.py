"""The HTTP API v1: upload, status, downloads, live events, cancel, and a view of the farm."""

from __future__ import annotations

import json
import logging
import time
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rq import Queue
from sqlalchemy.exc import SQLAlchemyError

from uploader import errors, live, playback
from uploader.auth import KeyRing
from uploader.errors import ApiError
from uploader.receive import receive_upload
from uploader.resources import ERRORS, FarmOut, VideoOut, VideoPage, video_resource
from vidfarm import metrics, presence
from vidfarm.catalog import ACTIVE, CANCELED, QUEUED, STATUSES
from vidfarm.farm import Farm
from vidfarm.jobs import enqueue_graph, new_job_id, plan_tasks, stop_video, total_frames
from vidfarm.probe import ProbeError, probe
from vidfarm.queues import queue_counts
from vidfarm.settings import Settings
from vidfarm.storage import STORAGE_ERRNOS, InvalidKey, is_video_id, new_video_id

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 32 * 1024


def require_tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    return request.app.state.keys.tenant(authorization)


Tenant = Annotated[str, Depends(require_tenant)]
VideoId = Annotated[str, Path(description="Video id (32 hex characters)", max_length=64)]


def create_app(farm: Farm) -> FastAPI:
    app = FastAPI(
        title="vidfarm",
        version="1",
        description="Upload videos, get 1080p/720p H.264 renditions from an autoscaling farm.",
    )
    errors.install(app)
    _install_dependency_errors(app)
    playback.install(app, farm)
    app.state.keys = KeyRing(farm.settings.api_keys)
    settings, storage, catalog = farm.settings, farm.storage, farm.catalog

    def owned(video_id: str, tenant_id: str) -> dict[str, Any]:
        """Another tenant's video is indistinguishable from a missing one."""
        video = catalog.get(video_id) if is_video_id(video_id) else None
        if video is None or video["tenant"] != tenant_id:
            raise ApiError(404, "not_found", f"no video with id {video_id!r}")
        return video

    @app.middleware("http")
    async def _limit_header_size(request: Request, call_next):
        # uvicorn's httptools parser buffers headers of any size; answer a flood with a clear 431
        # here (`vidfarm api` also caps the bytes the parser buffers: see cli.api).
        size = sum(len(name) + len(value) for name, value in request.scope["headers"])
        if size > MAX_HEADER_BYTES:
            return JSONResponse(errors.error_body("headers_too_large",
                                                  f"request headers exceed {MAX_HEADER_BYTES} bytes"),
                                status_code=431)
        return await call_next(request)

    @app.middleware("http")
    async def _observe_latency(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.HTTP_SECONDS.labels(
            request.method, getattr(route, "path", "unmatched"), str(response.status_code)
        ).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz() -> JSONResponse:
        checks = {"redis": _check(farm.redis.ping), "database": _check(catalog.ping),
                  "storage": "ok" if storage.writable() else "not writable"}
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/v1/videos", status_code=201, response_model=VideoOut, responses=ERRORS, tags=["videos"],
        openapi_extra=_UPLOAD_BODY_DOC,
    )
    async def upload_video(request: Request, tenant_id: Tenant) -> dict[str, Any]:
        started = time.perf_counter()
        video_id = new_video_id()
        incoming = storage.incoming_path(video_id)
        try:
            received = await receive_upload(request, incoming, settings.max_upload_bytes,
                                            settings.upload_idle_timeout_s)
            wanted = _renditions(received.fields.get("renditions") or request.query_params.get("renditions"),
                                 settings.ladder)
            queue = _queue(received.fields.get("queue") or request.query_params.get("queue"), settings)
            source = await run_in_threadpool(
                probe, incoming, max_duration_s=settings.max_duration_s, max_pixels=settings.max_pixels
            )
            await run_in_threadpool(storage.promote_upload, video_id)
            video = await run_in_threadpool(
                catalog.create,
                id=video_id, tenant=tenant_id, status=QUEUED, progress=0.0, attempts=0,
                filename=_printable(received.filename), size_bytes=received.size_bytes,
                duration_s=source.duration_s, width=source.width, height=source.height, fps=source.fps,
                video_codec=source.video_codec, audio_codec=source.audio_codec, interlaced=int(source.interlaced),
                hdr_transfer=source.hdr_transfer,
                queue=queue, job_id=new_job_id(video_id), requested=wanted,
                has_poster=0, start_s=source.start_s, file_start_s=source.file_start_s,
                total_frames=total_frames(source.duration_s, source.fps),
                tasks=plan_tasks(video_id, source.duration_s, source.fps, source.has_audio, settings.chunk_seconds),
            )
        except ProbeError as exc:
            metrics.UPLOADS.labels("rejected").inc()
            _forget(storage, video_id)
            raise ApiError(422, exc.code, exc.message) from exc
        except BaseException:
            metrics.UPLOADS.labels("rejected").inc()
            _forget(storage, video_id)
            raise
        await run_in_threadpool(_enqueue_or_defer, farm, video)
        metrics.UPLOADS.labels("accepted").inc()
        metrics.UPLOAD_BYTES.inc(received.size_bytes)
        metrics.UPLOAD_SECONDS.observe(time.perf_counter() - started)
        return video_resource(video, str(request.base_url), settings)

    @app.get("/v1/videos", response_model=VideoPage, responses=ERRORS, tags=["videos"])
    def list_videos(
        request: Request, tenant_id: Tenant,
        status: Annotated[str | None, Query(description="|".join(STATUSES))] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise ApiError(400, "invalid_status", f"status must be one of {', '.join(STATUSES)}")
        try:
            rows, next_cursor = catalog.list(tenant=tenant_id, status=status, limit=limit, cursor=cursor)
        except ValueError as exc:
            raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from exc
        base = str(request.base_url)
        return {"items": [video_resource(v, base, settings) for v in rows], "next_cursor": next_cursor}

    @app.get("/v1/videos/{video_id}", response_model=VideoOut, responses=ERRORS, tags=["videos"])
    def get_video(video_id: VideoId, request: Request, tenant_id: Tenant) -> dict[str, Any]:
        return video_resource(owned(video_id, tenant_id), str(request.base_url), settings)

    @app.get("/v1/videos/{video_id}/renditions/{name}", response_class=FileResponse, responses=ERRORS,
             tags=["videos"])
    def download_rendition(
        video_id: VideoId, name: Annotated[str, Path(max_length=16)], tenant_id: Tenant
    ) -> FileResponse:
        video = owned(video_id, tenant_id)
        if video["status"] != "ready" or name not in {r["name"] for r in video["renditions"] or []}:
            raise ApiError(404, "not_found", f"video {video_id} has no rendition {name!r}")
        try:
            path = storage.rendition_path(video_id, name)
        except InvalidKey as exc:
            raise ApiError(404, "not_found", str(exc)) from exc
        return FileResponse(path, media_type="video/mp4", filename=f"{video_id}-{name}.mp4")

    @app.get("/v1/videos/{video_id}/poster.jpg", response_class=FileResponse, responses=ERRORS,
             tags=["videos"])
    def download_poster(video_id: VideoId, tenant_id: Tenant) -> FileResponse:
        video = owned(video_id, tenant_id)
        if video["status"] != "ready" or not video["has_poster"]:
            raise ApiError(404, "not_found", f"video {video_id} has no poster")
        return FileResponse(storage.poster_path(video_id), media_type="image/jpeg")

    @app.get("/v1/videos/{video_id}/events", responses=ERRORS, tags=["videos"],
             response_class=StreamingResponse)
    async def video_events(video_id: VideoId, request: Request, tenant_id: Tenant) -> StreamingResponse:
        video = await run_in_threadpool(owned, video_id, tenant_id)
        stream = live.event_stream(farm, video, request)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.delete("/v1/videos/{video_id}", status_code=204, response_class=Response, responses=ERRORS,
                tags=["videos"])
    def delete_video(video_id: VideoId, tenant_id: Tenant) -> Response:
        video = owned(video_id, tenant_id)
        if video["status"] in ACTIVE:
            # Raise the flag first: a worker that claims the job between these lines still sees it.
            stop_video(farm, video_id)
        catalog.update(video_id, status=CANCELED, renditions=[], has_poster=0, progress=video["progress"])
        storage.delete_video(video_id)
        return Response(status_code=204)

    @app.get("/v1/farm", response_model=FarmOut, responses=ERRORS, tags=["farm"])
    def farm_view(tenant_id: Tenant) -> dict[str, Any]:
        return farm_snapshot(farm)

    return app


def farm_snapshot(farm: Farm) -> dict[str, Any]:
    workers = presence.all_workers(farm.redis)
    names = set(farm.settings.served_queues) | {q for w in workers for q in w.queues.split(",") if q}
    names |= {q.name for q in Queue.all(connection=farm.rq_redis)}
    queues = {name: queue_counts(farm.rq_redis, name) for name in sorted(names)}
    raw = farm.redis.get(presence.AUTOSCALER_STATUS_KEY)
    return {
        "queues": queues,
        "workers": [w.to_api() for w in workers],
        "autoscaler": json.loads(raw) if raw else None,
    }


def _check(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure as text
        return f"error: {type(exc).__name__}"


def _install_dependency_errors(app: FastAPI) -> None:
    """Redis or the database being away is a 503 with a clear message, never a 500."""

    @app.exception_handler(redis.RedisError)
    async def _redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("redis unavailable: %s", type(exc).__name__)
        return JSONResponse(errors.error_body("redis_unavailable", "the queue (Redis) is unavailable; retry"),
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(OSError)
    async def _storage_error(_: Request, exc: OSError) -> JSONResponse:
        # A full or read-only disk under an upload is the server's trouble, not a bug: say so.
        if exc.errno not in STORAGE_ERRNOS:
            log.exception("unexpected error")
            return JSONResponse(errors.error_body("internal", "internal error; the request was not applied"), 500)
        log.warning("storage unavailable: %s", exc.strerror)
        return JSONResponse(errors.error_body("storage_unavailable", f"storage error: {exc.strerror}; retry later"),
                            status_code=503, headers={"Retry-After": "30"})

    @app.exception_handler(SQLAlchemyError)
    async def _db_down(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        return JSONResponse(errors.error_body("database_unavailable", "the catalog database is unavailable; retry"),
                            status_code=503, headers={"Retry-After": "5"})


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


def _forget(storage, video_id: str) -> None:
    """Nothing is left behind for a rejected upload."""
    try:
        storage.delete_video(video_id)
    except OSError as exc:  # a read-only disk: nothing could have been written there either
        log.warning("could not remove rejected upload %s: %s", video_id, exc.strerror)


def _enqueue_or_defer(farm: Farm, video: dict[str, Any]) -> None:
    try:
        enqueue_graph(farm.rq_redis, farm.settings, video, farm.catalog.tasks(video["id"]))
        metrics.JOBS_ENQUEUED.labels(video["queue"]).inc()
    except redis.RedisError as exc:
        # The catalog row is written, so the video is accepted: the reconciler queues it once
        # Redis is back. Failing the request now would make the client upload it twice.
        log.warning("video %s accepted but not queued yet (%s); the reconciler will queue it",
                    video["id"], type(exc).__name__)


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

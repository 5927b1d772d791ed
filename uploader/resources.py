"""The JSON shapes of API v1, as pydantic models so /openapi.json documents them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from uploader.playback import playback_urls
from vidfarm import tus
from vidfarm.catalog import VideoRow
from vidfarm.settings import Settings
from vidfarm.states import VideoStatus, WorkerState


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class SourceOut(BaseModel):
    filename: str
    size_bytes: int
    duration_s: float
    width: int
    height: int
    fps: float
    video_codec: str
    audio_codec: str | None


class QualityOut(BaseModel):
    """The rendition next to its source (transcoder/quality.py): VMAF (model vmaf_v0.6.1, the
    rendition scaled to the source's size) over the scored frames, their 5th percentile, and the
    mean luma PSNR."""

    vmaf_mean: float
    vmaf_p5: float
    psnr_db: float
    frames_scored: int


class RenditionOut(BaseModel):
    name: str
    width: int
    height: int
    bitrate_kbps: int
    size_bytes: int
    url: str
    quality: QualityOut | None = None  # null: not scored (no scorer on the worker, or it failed)


class PlaybackOut(BaseModel):
    """Signed player URLs, from the moment the video is playable. While it is still processing only
    HLS plays (its playlists grow as segments are encoded): `dash` is null until it is ready."""

    hls: str
    dash: str | None
    expires_at: int


class UploadOut(BaseModel):
    """A resumable upload still receiving bytes (status `uploading`)."""

    received_bytes: int
    length_bytes: int
    expires_at: str


class VideoOut(BaseModel):
    id: str
    status: VideoStatus
    progress: float
    attempts: int
    error: ErrorDetail | None
    source: SourceOut
    renditions: list[RenditionOut]
    poster_url: str | None
    playable_at: str | None = None  # when the first segment of every track existed (ISO 8601, UTC)
    playback: PlaybackOut | None = None
    upload: UploadOut | None = None
    created_at: str
    updated_at: str


class VideoPage(BaseModel):
    items: list[VideoOut]
    next_cursor: str | None


class QueueOut(BaseModel):
    queued: int
    running: int
    failed: int


class WorkerOut(BaseModel):
    name: str
    pid: int
    host: str
    queues: list[str]
    state: WorkerState
    video_id: str | None
    encoder: str
    pool: str


class FarmOut(BaseModel):
    queues: dict[str, QueueOut]
    workers: list[WorkerOut]
    autoscaler: dict[str, Any] | None


ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 503)}


def video_error(video: VideoRow) -> dict[str, str | None] | None:
    """Why a video failed, as the API and the live events show it."""
    if not video["error_code"]:
        return None
    return {"code": video["error_code"], "message": video["error_message"]}


def video_resource(video: VideoRow, base_url: str, settings: Settings) -> dict[str, Any]:
    prefix = f"{base_url.rstrip('/')}/v1/videos/{video['id']}"
    ready = video["status"] == VideoStatus.READY
    return {
        "id": video["id"],
        "status": video["status"],
        "progress": video["progress"] or 0.0,
        "attempts": video["attempts"],
        "error": video_error(video),
        "source": {k: video[k] for k in SourceOut.model_fields},
        "renditions": [
            {**r, "quality": r.get("quality"), "url": f"{prefix}/renditions/{r['name']}"}
            for r in (video["renditions"] or [])
        ] if ready else [],
        "poster_url": f"{prefix}/poster.jpg" if ready and video["has_poster"] else None,
        "playable_at": video.get("playable_at"),
        "playback": playback_urls(settings, video, base_url),
        "upload": _upload(video, settings),
        "created_at": video["created_at"],
        "updated_at": video["updated_at"],
    }


def _upload(video: VideoRow, settings: Settings) -> dict[str, Any] | None:
    if video["status"] != VideoStatus.UPLOADING:
        return None
    return {
        "received_bytes": video["received_bytes"] or 0,
        "length_bytes": video["size_bytes"],
        "expires_at": tus.expires_at(video, settings.tus_expiry_s).isoformat(),
    }


def webhook_document(settings: Settings) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """What a webhook event carries of its video: the document `GET /v1/videos/{id}` answers, its links
    on the configured public URL (a deliverer serves no request to take one from)."""
    return lambda video: video_resource(video, settings.base_url, settings)  # type: ignore[arg-type]

"""The life of a video and of its tasks: every change of status is made here, and only here.

Each transition is one function. It does the compare-and-set in the catalog (a move into ready, failed
or canceled writes the tenant's webhook events in the same transaction: `Catalog.update`), and only
when the row moved: the status event (pub/sub, for live streams), the metric, and for a video that
fails or is canceled, stopping its other jobs. The callers (the routes, tus, the worker, the
reconciler) say what happened; how the farm records and announces it is decided once, here.
docs/design.md, "The lifecycle", draws both state machines.

    video:  receiving ─admit→ queued ─start→ processing ─ready→ ready
            processing ─playable→ processing (once: playable_at set, it plays while encoded)
            uploading ─admit→ queued
            any of receiving/uploading/queued/processing ─fail→ failed, ─cancel→ canceled
    task:   queued ─start→ running ─task_done→ done;  queued/running ─retry→ queued (a new job id);
            done ─retry→ queued (a chunk that recorded no segments, from before an upgrade)

Errors the asker caused are domain errors (`Rejected` and its kinds): the API maps them to HTTP
(uploader/errors.py); nothing here knows about HTTP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError

from vidfarm import events, metrics, segments
from vidfarm.catalog import Task, VideoRow
from vidfarm.farm import Farm
from vidfarm.jobs import enqueue_graph, new_job_id, plan_tasks, stop_failed_video, stop_video, total_frames
from vidfarm.probe import ProbeError, SourceInfo, probe
from vidfarm.settings import Settings
from vidfarm.states import ACTIVE, TASK_ACTIVE, TERMINAL, TaskKind, TaskStatus, VideoStatus
from vidfarm.storage import SourceHandle, StorageUnavailable, new_video_id

log = logging.getLogger(__name__)

# What only the probe can say; the row of an upload still arriving needs a value in these columns.
NOT_PROBED = {"duration_s": 0.0, "width": 0, "height": 0, "fps": 0.0, "video_codec": ""}
CANCELED_REASON = "canceled"  # the failure metric's reason for a video stopped by its owner
ERROR_MESSAGE_MAX = 2000  # characters of an error message kept (ffmpeg's stderr can be long)
_CREATING = threading.Lock()
# An upload's `quality`: every frame scored, or the farm's sampling (the default).
FULL_QUALITY = "full"
SAMPLED = "sampled"


# -- domain errors --------------------------------------------------------------------------------


class Rejected(Exception):
    """What was asked cannot be done: the input is not a video we accept, or names what does not
    exist. `code` is stable, `message` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Gone(Rejected):
    """The upload ended (terminated, expired) before its last byte made it a video."""


class TooManyUploads(Rejected):
    """The tenant holds as many unfinished resumable uploads as it may."""

    retry_after_s = 60


# -- admission ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """A file that has fully arrived in storage, and what was asked of it."""

    video_id: str
    tenant: str
    filename: str
    size_bytes: int
    renditions: str | None
    queue: str | None
    quality: str | None = None  # `full`: every frame scored


def receive(farm: Farm, tenant: str) -> str:
    """A regular upload begins (`receiving`): the row before the first byte is stored, so whatever lands
    in storage has a row saying whose it is, and the reconciler removes it only on that row's word."""
    video_id = new_video_id()
    farm.catalog.create(id=video_id, tenant=tenant, status=VideoStatus.RECEIVING, progress=0.0, attempts=0,
                        filename="upload", size_bytes=0, queue=farm.settings.default_queue, has_poster=0,
                        **NOT_PROBED)
    return video_id


def open_upload(farm: Farm, tenant: str, size_bytes: int, filename: str, renditions: str | None,
                queue: str | None, quality: str | None = None) -> VideoRow:
    """A resumable upload begins (`uploading`), what was asked checked as for a regular upload (now, not
    after 20 GiB), its (empty) bytes started in storage."""
    settings, video_id = farm.settings, new_video_id()
    fields = {
        "tenant": tenant, "status": VideoStatus.UPLOADING, "progress": 0.0, "attempts": 0, "size_bytes": size_bytes,
        "filename": printable(filename), "requested": renditions_asked(renditions, settings.ladder),
        "queue": queue_asked(queue, settings), "quality_mode": quality_asked(quality), "has_poster": 0,
        "received_bytes": 0, **NOT_PROBED,
    }
    # One creation at a time in this process, so concurrent requests cannot all pass the count;
    # replicas racing each other overshoot the cap by a few at most.
    with _CREATING:
        _check_open_uploads(farm, tenant)
        # Nobody holds the id before this returns, so nobody sees the row without its (empty) upload.
        video = farm.catalog.create(id=video_id, **fields)
        try:
            farm.storage.start_resumable(video_id)
        except BaseException:
            farm.catalog.forget(video_id, was=VideoStatus.UPLOADING)
            raise
        return video


def _check_open_uploads(farm: Farm, tenant: str) -> None:
    """Each unfinished upload holds storage (and, on S3, a multipart upload) until it expires: a
    tenant may keep only so many at once. Expired ones the reconciler has not swept yet do not count."""
    settings = farm.settings
    fresh_since = datetime.now(UTC) - timedelta(seconds=settings.tus_expiry_s)
    if farm.catalog.count(tenant, VideoStatus.UPLOADING, updated_since=fresh_since) >= settings.max_open_uploads:
        raise TooManyUploads("too_many_uploads", f"at most {settings.max_open_uploads} unfinished resumable "
                             "uploads per tenant (VIDFARM_MAX_OPEN_UPLOADS): finish or terminate one first")


def admit(farm: Farm, upload: Upload, stored: SourceHandle, *, was: VideoStatus) -> VideoRow:
    """The one way an upload becomes a video (`was` → queued), for `POST /v1/videos` and a tus upload's
    last PATCH alike: check what was asked, probe the file, move it into its video folder, fill in the
    `was` row (`receiving` or `uploading`) with its task graph, queue it. Blocking.

    Raises Rejected (a file that is not a video we accept), Gone (the row is no longer `was`); the
    caller removes what is left."""
    settings = farm.settings
    wanted = renditions_asked(upload.renditions, settings.ladder)
    queue = queue_asked(upload.queue, settings)
    quality_mode = quality_asked(upload.quality)
    try:
        source = probe(stored, max_duration_s=settings.max_duration_s, max_pixels=settings.max_pixels)
    except ProbeError as exc:
        raise Rejected(exc.code, exc.message) from exc
    farm.storage.promote_upload(upload.video_id)
    video = farm.catalog.fill(
        upload.video_id, was=was, tenant=upload.tenant, status=VideoStatus.QUEUED, progress=0.0, attempts=0,
        filename=printable(upload.filename), size_bytes=upload.size_bytes, **_source_columns(source), queue=queue,
        job_id=new_job_id(upload.video_id), requested=wanted, quality_mode=quality_mode, has_poster=0,
        tasks=plan_tasks(upload.video_id, source.duration_s, source.fps, source.has_audio, settings.chunk_seconds,
                         settings.pool_max_workers),
    )
    if video is None:
        raise Gone("not_found", f"upload {upload.video_id} was terminated or expired before it completed")
    _enqueue_or_defer(farm, video)
    metrics.UPLOADS.labels("accepted").inc()
    metrics.UPLOAD_BYTES.inc(upload.size_bytes)
    return video


def complete_upload(farm: Farm, video: VideoRow, stored: SourceHandle) -> VideoRow:
    """A resumable upload's last byte arrived: admitted, or failed with the reason (the row says why,
    the bytes go) and Rejected raised on."""
    upload = Upload(video_id=video["id"], tenant=video["tenant"], filename=video["filename"],
                    size_bytes=video["size_bytes"], renditions=",".join(video["requested"] or []) or None,
                    queue=video["queue"], quality=video.get("quality_mode"))
    try:
        return admit(farm, upload, stored, was=VideoStatus.UPLOADING)
    except Gone:
        raise
    except Rejected as exc:
        fail(farm, video["id"], exc.code, exc.message, expect={"status": VideoStatus.UPLOADING})
        metrics.UPLOADS.labels("rejected").inc()
        _remove_media(farm, video["id"])
        raise


def withdraw(farm: Farm, video_id: str) -> None:
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
    if _remove_media(farm, video_id):
        with contextlib.suppress(SQLAlchemyError):
            farm.catalog.forget(video_id, was=VideoStatus.RECEIVING)


def renditions_asked(raw: str | None, ladder: tuple[str, ...]) -> list[str] | None:
    if not raw:
        return None
    wanted = [r.strip() for r in raw.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ladder]
    if unknown or not wanted:
        raise Rejected("unknown_rendition",
                       f"unknown rendition {', '.join(unknown) or raw!r}; choose from {', '.join(ladder)}")
    return sorted(set(wanted), key=ladder.index)


def quality_asked(raw: str | None) -> str | None:
    """`full`: every frame of every rendition scored (VMAF costs several times the encode's CPU then);
    unset or `sampled`: the farm's sampling (VIDFARM_QUALITY_EVERY, VIDFARM_QUALITY_GOP_EVERY)."""
    asked = (raw or "").strip().lower()
    if asked in ("", SAMPLED):
        return None
    if asked != FULL_QUALITY:
        raise Rejected("unknown_quality", f"quality must be {FULL_QUALITY} or {SAMPLED}, got {raw!r}")
    return FULL_QUALITY


def queue_asked(raw: str | None, settings: Settings) -> str:
    """Which pool runs the video (e.g. `gpu` for NVENC workers); the configured default otherwise."""
    try:
        return settings.queue_for(raw)
    except ValueError as exc:
        raise Rejected("unknown_queue", str(exc)) from None


def printable(filename: str) -> str:
    """Kept only as metadata; strip control characters and path parts so it displays safely."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in name if ch.isprintable())[:255]
    return cleaned or "upload"


def _source_columns(source: SourceInfo) -> dict[str, Any]:
    return {
        "duration_s": source.duration_s, "width": source.width, "height": source.height, "fps": source.fps,
        "video_codec": source.video_codec, "audio_codec": source.audio_codec,
        "interlaced": int(source.interlaced), "hdr_transfer": source.hdr_transfer,
        "start_s": source.start_s, "file_start_s": source.file_start_s,
        "total_frames": total_frames(source.duration_s, source.fps),
    }


def _enqueue_or_defer(farm: Farm, video: VideoRow) -> None:
    try:
        enqueue_graph(farm.rq_redis, farm.settings, video, farm.catalog.tasks(video["id"]))
        metrics.JOBS_ENQUEUED.labels(video["queue"]).inc()
    except redis.RedisError as exc:
        # The catalog row is written, so the video is accepted: the reconciler queues it once
        # Redis is back. Failing the request now would make the client upload it twice.
        log.warning("video %s accepted but not queued yet (%s); the reconciler will queue it",
                    video["id"], type(exc).__name__)


def _remove_media(farm: Farm, video_id: str) -> bool:
    try:
        farm.storage.delete_video(video_id)
        return True
    except OSError as exc:  # a read-only disk: nothing could have been written there either
        log.warning("could not remove rejected upload %s: %s", video_id, exc.strerror)
    except StorageUnavailable as exc:  # the store is down: its lifecycle rule and the reconciler clean up
        log.warning("could not remove rejected upload %s: %s", video_id, exc)
    return False


# -- a task and its video -------------------------------------------------------------------------


def start(farm: Farm, video: VideoRow, task: Task, worker: str) -> Task | None:
    """A worker takes the task's current attempt (queued → running, one more attempt), and the video
    shows `processing` from its first task on, with the most attempts any of its tasks needed (a video
    re-run after a crash shows 2). None when another attempt or a cancel came first."""
    attempt = task.attempts + 1
    claimed = farm.catalog.update_task(
        video["id"], task.name, expect={"job_id": task.job_id, "status": TASK_ACTIVE, "attempts": task.attempts},
        status=TaskStatus.RUNNING, worker=worker, attempts=attempt, done_frames=0,
    )
    if not claimed:
        return None
    fields: dict[str, Any] = {"attempts": max(video["attempts"], attempt), "worker": worker}
    starts = video["status"] == VideoStatus.QUEUED
    if starts:
        fields["status"] = VideoStatus.PROCESSING
    moved = farm.catalog.update(video["id"], expect={"status": video["status"], "attempts": video["attempts"]},
                                **fields)
    if moved and starts:
        _announce(farm, video["id"], VideoStatus.PROCESSING, progress=0.0)
    return dataclasses.replace(task, status=TaskStatus.RUNNING, worker=worker, attempts=attempt, done_frames=0)


def progress(farm: Farm, video_id: str, task_name: str, job_id: str, frames: int,
             percent: Callable[[int], float]) -> int:
    """A running chunk's done frames, and its video's progress (`percent` of the frames all its chunks
    have done); only while `job_id` runs it and the video is processing. The frames all chunks did."""
    return farm.catalog.record_progress(video_id, task_name, job_id, frames, percent)


def task_done(farm: Farm, video_id: str, task_name: str, job_id: str, result: dict[str, Any]) -> bool:
    """The attempt finished (running → done): it counts only if the catalog still names it."""
    return farm.catalog.update_task(video_id, task_name, expect={"job_id": job_id, "status": TaskStatus.RUNNING},
                                    status=TaskStatus.DONE, result={"attempt": job_id, **result})


def running_segments(farm: Farm, video_id: str, task_name: str, job_id: str, result: dict[str, Any]) -> bool:
    """The running attempt `job_id` stored segments (the audio as they close, a chunk before its
    quality scoring): its result says which (see vidfarm/segments.py), only while the catalog still
    names it. The task stays running."""
    return farm.catalog.update_task(video_id, task_name, expect={"job_id": job_id, "status": TaskStatus.RUNNING},
                                    result={"attempt": job_id, **result})




def announce_if_playable(farm: Farm, video_id: str) -> bool:
    """After a chunk or the audio recorded segments: the video becomes playable once the first
    segment of every rung and of the audio exists. A cached read once it already is."""
    video = farm.catalog.get(video_id)
    if video is None or video.get("playable_at") is not None or video["status"] != VideoStatus.PROCESSING:
        return False
    if not segments.is_playable(segments.stream_state(farm.catalog.tasks(video_id))):
        return False
    return playable(farm, video_id)


def ready(farm: Farm, video_id: str, job_id: str, result: dict[str, Any]) -> bool:
    """Finalize (attempt `job_id`) published the video (queued or processing → ready). False when it
    was canceled or failed meanwhile: then nothing was recorded."""
    done = farm.catalog.update(
        video_id, expect={"status": ACTIVE},
        status=VideoStatus.READY, progress=100.0, renditions=result["renditions"],
        has_poster=int(result["has_poster"]), has_stream=1, total_frames=result["frames"],
        error_code=None, error_message=None,
    )
    if done:
        task_done(farm, video_id, TaskKind.FINALIZE, job_id, {"frames": result["frames"]})
        _announce(farm, video_id, VideoStatus.READY, progress=100.0)
    return done


def playable(farm: Farm, video_id: str) -> bool:
    """The first segment of every rung and of the audio exists: the video plays while it is still
    processing. Once per video (`playable_at` is set once): the `playable` event and the webhook
    `video.playable`. False when it was already playable, or is no longer processing."""
    if not farm.catalog.mark_playable(video_id):
        return False
    log.info("video %s: playable", video_id)
    events.publish(farm.redis, video_id, "playable")
    return True


def retry(farm: Farm, video_id: str, task: Task) -> Task | None:
    """The task runs again under a new job id (queued, running or done → queued); the stale attempt, if it
    ever runs, sees that it is not current and stops. The new task, or None when it moved meanwhile.
    The caller queues it (it knows what the job waits on)."""
    job_id = new_job_id(video_id, task.name)
    moved = farm.catalog.update_task(
        video_id, task.name, expect={"job_id": task.job_id, "status": task.status},
        status=TaskStatus.QUEUED, job_id=job_id, worker=None, done_frames=0,
    )
    if not moved:
        return None
    return dataclasses.replace(task, status=TaskStatus.QUEUED, job_id=job_id, worker=None, done_frames=0)


def fail(farm: Farm, video_id: str, code: str, message: str, *, expect: Mapping[str, Any] | None = None,
         keep: str | None = None, **fields: Any) -> bool:
    """The video cannot be made (→ failed), with a reason: counted, announced, and its other jobs
    stopped (queued ones dropped, running ones see the cancel flag); `keep` is the caller's own job.
    Only while the row matches `expect` (by default: queued or processing); False otherwise: the video
    already ended, and nothing happens."""
    expect = expect or {"status": ACTIVE}
    message = message[-ERROR_MESSAGE_MAX:]
    if not farm.catalog.update(video_id, expect=expect, status=VideoStatus.FAILED, error_code=code,
                               error_message=message, **fields):
        return False
    log.warning("video %s failed: %s: %s", video_id, code, message)
    metrics.FAILURES.labels(code).inc()
    _announce(farm, video_id, VideoStatus.FAILED, error={"code": code, "message": message})
    was = expect["status"] if isinstance(expect["status"], tuple) else (expect["status"],)
    if set(was) & set(ACTIVE):  # it may have jobs (an upload has none yet)
        stop_failed_video(farm, video_id, keep=keep)
    return True


def expire(farm: Farm, video_id: str, holder: str, code: str, message: str) -> bool:
    """An unfinished resumable upload nobody wrote to for too long (uploading → failed), while the
    sweeper holds its lease; its bytes go."""
    if not fail(farm, video_id, code, message, expect={"status": VideoStatus.UPLOADING, "lease_holder": holder},
                lease_holder=None, lease_until=None):
        return False
    farm.storage.delete_video(video_id)
    return True


def cancel(farm: Farm, video: VideoRow, *, only_if: VideoStatus | None = None) -> bool:
    """The owner stops or deletes the video (→ canceled: `DELETE /v1/videos/{id}` from any status, a
    tus termination `only_if` it is still uploading); its media goes. A video that was still being made
    is counted as a failure (reason `canceled`) and announced. Raises RedisError before anything is
    changed when its jobs cannot be stopped (the API then answers 503)."""
    if video["status"] in ACTIVE:
        # Raise the flag first: a worker that claims the job between these lines still sees it.
        stop_video(farm, video["id"])
    expect = {"status": only_if} if only_if else None
    if not farm.catalog.update(video["id"], expect=expect, status=VideoStatus.CANCELED, renditions=[],
                               has_poster=0, progress=video["progress"]):
        return False
    if video["status"] not in TERMINAL:
        metrics.FAILURES.labels(CANCELED_REASON).inc()
        _announce(farm, video["id"], VideoStatus.CANCELED, progress=video["progress"])
    farm.storage.delete_video(video["id"])
    return True


def _announce(farm: Farm, video_id: str, status: VideoStatus, **data: Any) -> None:
    events.publish(farm.redis, video_id, "status", status=status, **data)

"""The RQ job: transcode one video into its ladder, with the catalog as the record of truth.

Each attempt claims the video with a compare-and-set on its job id, so a stale duplicate of an older
attempt (after a worker was presumed dead, or Redis was wiped and the job re-queued) does nothing.
Errors the input causes fail the video at once; anything else is left for the reconciler to retry.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException
from sqlalchemy.exc import SQLAlchemyError

from transcoder.command import ENCODERS, Encoder, poster_args, transcode_args
from transcoder.ladder import OutputPlan, plan_outputs, poster_size, rungs_named
from transcoder.runner import Canceled, FfmpegError, FfmpegStalled, run_ffmpeg
from vidfarm import cancel, events, metrics
from vidfarm.catalog import ACTIVE, CANCELED, FAILED, PROCESSING, READY
from vidfarm.farm import Farm
from vidfarm.probe import SourceInfo
from vidfarm.settings import Settings
from vidfarm.storage import STORAGE_ERRNOS, publish, temp_name

log = logging.getLogger(__name__)

EVENT_INTERVAL_S = 0.25
CATALOG_INTERVAL_S = 1.0
SHORTFALL_TOLERANCE_S = 2.0
SHORTFALL_TOLERANCE_RATIO = 0.05
# The same errors reported by ffmpeg itself (it opens and writes the outputs): its stderr carries
# the strerror text. They are the disk's fault, not the input's. EIO is left out: ffmpeg also says
# "Input/output error" about broken input files.
STORAGE_MESSAGES = tuple(os.strerror(e) for e in sorted(STORAGE_ERRNOS - {errno.EIO}))


@dataclass
class WorkerIdentity:
    """Set by the worker process before it takes jobs."""

    name: str = "unknown"
    encoder: Encoder = ENCODERS["x264"]
    stall_timeout_s: float = 300.0


IDENTITY = WorkerIdentity()
_FARM: Farm | None = None


def current_farm() -> Farm:
    global _FARM
    if _FARM is None:
        _FARM = Farm(Settings.from_env())
    return _FARM


def use_farm(farm: Farm) -> None:
    global _FARM
    _FARM = farm


def transcode(video_id: str, job_id: str) -> str:
    """RQ entry point (enqueued by dotted path). Returns the outcome for RQ's result record."""
    return Attempt(current_farm(), video_id, job_id).run()


def source_from_row(video: dict[str, Any]) -> SourceInfo:
    return SourceInfo(
        duration_s=video["duration_s"], width=video["width"], height=video["height"], fps=video["fps"],
        video_codec=video["video_codec"], audio_codec=video["audio_codec"], pix_fmt="", rotation=0,
        interlaced=bool(video.get("interlaced")), hdr_transfer=video.get("hdr_transfer"),
    )


class SourceEndsEarly(Exception):
    """ffmpeg stopped cleanly but well short of the duration the container declares: a file cut
    short (any container). Publishing it would hand users a video that silently stops."""


def check_complete(encoded_s: float, duration_s: float) -> None:
    # A little slack: declared durations are rounded, and audio may outlast the last video frame.
    if encoded_s < duration_s - max(SHORTFALL_TOLERANCE_S, SHORTFALL_TOLERANCE_RATIO * duration_s):
        raise SourceEndsEarly(
            f"the source ends early: only {encoded_s:.1f} s of its declared {duration_s:.1f} s could be decoded"
        )


class Attempt:
    def __init__(self, farm: Farm, video_id: str, job_id: str) -> None:
        self.farm = farm
        self.catalog = farm.catalog
        self.video_id = video_id
        self.job_id = job_id
        self.encoder = IDENTITY.encoder
        self._last_event = 0.0
        self._last_write = 0.0
        self.temps: list[Path] = []

    # -- lifecycle --------------------------------------------------------------------------------

    def run(self) -> str:
        video = self.claim()
        if video is None:
            return "skipped"
        started = time.monotonic()
        try:
            renditions, poster = self.encode(video)
            if not self.finish(renditions, poster):
                metrics.TRANSCODES.labels(self.encoder.name, CANCELED).inc()
                return CANCELED
        except Canceled:
            self.discard()
            metrics.TRANSCODES.labels(self.encoder.name, CANCELED).inc()
            return CANCELED
        except FfmpegError as exc:
            # Users see this message: our storage layout is none of their business.
            detail = exc.stderr_tail.replace(str(self.farm.storage.root), "<storage>")
            storage = next((m for m in STORAGE_MESSAGES if m in detail), None)
            if storage is not None:
                return self.fail("storage_error", f"storage error: {storage} (ffmpeg: {detail})")
            return self.fail("media_error", f"ffmpeg could not transcode the source: {detail}")
        except FfmpegStalled as exc:
            return self.fail("stalled", str(exc))
        except SourceEndsEarly as exc:
            return self.fail("truncated", str(exc))
        except JobTimeoutException:
            return self.fail("timeout", "the transcode ran past its time limit")
        except OSError as exc:
            if exc.errno not in STORAGE_ERRNOS:
                raise
            return self.fail("storage_error", f"storage error: {exc.strerror}")
        except BaseException:
            # Transient (database, Redis, a signal): outputs stay unpublished, the video stays
            # `processing` and the reconciler re-queues it once this worker is no longer on it.
            # The reconciler counts the retry when it re-queues (it also sees workers that died).
            self.discard()
            raise
        self.observe_success(video, time.monotonic() - started)
        return READY

    def claim(self) -> dict[str, Any] | None:
        video = self.catalog.get(self.video_id, cached=False)
        if video is None or video["job_id"] != self.job_id or video["status"] not in ACTIVE:
            log.info("job %s is stale (video %s is %s); skipping", self.job_id, self.video_id,
                     video and video["status"])
            return None
        claimed = self.catalog.update(
            self.video_id,
            expect={"job_id": self.job_id, "status": ACTIVE, "attempts": video["attempts"]},
            status=PROCESSING, worker=IDENTITY.name, attempts=video["attempts"] + 1, progress=0.0,
        )
        if not claimed:
            return None
        self.observe_wait(video["queue"])
        events.publish(self.farm.redis, self.video_id, "status", status=PROCESSING, progress=0.0)
        log.info("video %s: attempt %d on %s", self.video_id, video["attempts"] + 1, IDENTITY.name)
        return video

    def encode(self, video: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        storage = self.farm.storage
        source_path = storage.source_path(self.video_id)
        source = source_from_row(video)
        names = video["requested"] or list(self.farm.settings.ladder)
        plans = plan_outputs(source, rungs_named(names))
        self.remove_leftovers(source_path.parent)
        outputs = [(plan, self.temp_for(storage.rendition_path(self.video_id, plan.name))) for plan in plans]
        args = transcode_args(source_path, outputs, has_audio=source.has_audio, encoder=self.encoder,
                              deinterlace=source.interlaced, hdr_transfer=source.hdr_transfer)
        encoded_s = run_ffmpeg(
            args,
            on_progress=lambda t: self.progress(t, source.duration_s),
            should_cancel=self.cancel_requested,
            stall_timeout_s=IDENTITY.stall_timeout_s,
        )
        check_complete(encoded_s, source.duration_s)
        poster = self.make_poster(source_path, source)
        for plan, temp in outputs:
            publish(temp, storage.rendition_path(self.video_id, plan.name))
        return [self.describe_output(plan, source.duration_s) for plan, _ in outputs], poster

    def finish(self, renditions: list[dict[str, Any]], poster: bool) -> bool:
        done = self.catalog.update(
            self.video_id, expect={"job_id": self.job_id, "status": PROCESSING},
            status=READY, progress=100.0, renditions=renditions, has_poster=int(poster),
            error_code=None, error_message=None,
        )
        if not done:
            self.after_lost_claim()
            return False
        events.publish(self.farm.redis, self.video_id, "status", status=READY, progress=100.0)
        log.info("video %s: ready (%s)", self.video_id, ", ".join(r["name"] for r in renditions))
        return True

    def fail(self, code: str, message: str) -> str:
        self.discard()
        log.warning("video %s failed: %s: %s", self.video_id, code, message)
        failed = self.catalog.update(
            self.video_id, expect={"job_id": self.job_id, "status": PROCESSING},
            status=FAILED, error_code=code, error_message=message[-2000:],
        )
        if failed:
            metrics.FAILURES.labels(code).inc()
            metrics.TRANSCODES.labels(self.encoder.name, FAILED).inc()
            events.publish(self.farm.redis, self.video_id, "status", status=FAILED,
                           error={"code": code, "message": message})
        return FAILED

    # -- helpers ----------------------------------------------------------------------------------

    def temp_for(self, final: Path) -> Path:
        temp = temp_name(final, self.job_id)
        self.temps.append(temp)
        return temp

    def remove_leftovers(self, folder: Path) -> None:
        """Partial files of an attempt that died; a retry starts clean."""
        for leftover in folder.glob(".*.part"):
            leftover.unlink(missing_ok=True)

    def discard(self) -> None:
        for temp in self.temps:
            try:
                temp.unlink(missing_ok=True)
            except OSError as exc:
                # A read-only disk refuses even this; failing here would leave the video
                # `processing` instead of `failed` with the real reason.
                log.warning("video %s: cannot remove %s: %s", self.video_id, temp.name, exc.strerror)

    def after_lost_claim(self) -> None:
        video = self.catalog.get(self.video_id, cached=False)
        if video is None or video["status"] == CANCELED:
            self.farm.storage.delete_video(self.video_id)
        log.info("video %s: result dropped, the video was canceled or re-assigned", self.video_id)

    def cancel_requested(self) -> bool:
        try:
            return cancel.requested(self.farm.redis, self.video_id)
        except redis.RedisError:
            return False  # cannot tell; the final compare-and-set still catches a cancel

    def progress(self, encoded_s: float, duration_s: float) -> None:
        percent = round(min(99.0, 100.0 * encoded_s / max(duration_s, 0.001)), 1)
        now = time.monotonic()
        if now - self._last_event >= EVENT_INTERVAL_S:
            self._last_event = now
            events.publish(self.farm.redis, self.video_id, "progress", progress=percent)
        if now - self._last_write >= CATALOG_INTERVAL_S:
            self._last_write = now
            try:
                self.catalog.update(self.video_id, expect={"job_id": self.job_id, "status": PROCESSING},
                                    progress=percent)
            except SQLAlchemyError as exc:
                # Progress is best effort: a database blip must not throw away an hour of encoding.
                log.warning("video %s: progress not saved: %s", self.video_id, type(exc).__name__)

    def make_poster(self, source_path: Path, source: SourceInfo) -> bool:
        final = self.farm.storage.poster_path(self.video_id)
        temp = self.temp_for(final)
        width, height = poster_size(source)
        at_s = min(source.duration_s * 0.1, 5.0)
        try:
            run_ffmpeg(poster_args(source_path, temp, at_s=at_s, width=width, height=height),
                       stall_timeout_s=60)
        except FfmpegError as exc:
            log.warning("video %s: no poster: %s", self.video_id, exc)
            return False
        if not temp.exists() or temp.stat().st_size == 0:
            return False
        publish(temp, final)
        return True

    def describe_output(self, plan: OutputPlan, duration_s: float) -> dict[str, Any]:
        size = self.farm.storage.rendition_path(self.video_id, plan.name).stat().st_size
        # Average over the whole file (video + audio), as ffprobe's format bit_rate reports it,
        # without spawning ffprobe per rendition.
        bitrate_kbps = round(size * 8 / max(duration_s, 0.001) / 1000)
        return {"name": plan.name, "width": plan.width, "height": plan.height,
                "bitrate_kbps": bitrate_kbps, "size_bytes": size}

    # -- metrics ----------------------------------------------------------------------------------

    def observe_wait(self, queue: str) -> None:
        job = get_current_job()
        if job is not None and job.enqueued_at is not None:
            waited = time.time() - job.enqueued_at.timestamp()
            metrics.JOB_WAIT_SECONDS.labels(queue).observe(max(0.0, waited))

    def observe_success(self, video: dict[str, Any], wall_s: float) -> None:
        metrics.TRANSCODE_SECONDS.labels(video["queue"], self.encoder.name).observe(wall_s)
        metrics.TRANSCODE_SPEED.labels(self.encoder.name).observe(video["duration_s"] / max(wall_s, 1e-3))
        metrics.TRANSCODES.labels(self.encoder.name, READY).inc()



"""The reconciler: makes Redis agree with the catalog again after anything went wrong.

The catalog is the truth. A video that is `queued` but whose job is not in Redis (Redis was wiped,
or the enqueue failed) is queued again. A video that is `processing` but whose worker is gone, or
is no longer working on it (killed worker, node loss, OOM, a crash of the job), runs again, up to
`max_attempts`, after which it fails with a reason. Every change is a compare-and-set on the job id,
so a reconciler racing a worker (or another reconciler) never runs a video twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from rq.job import Job, JobStatus

from vidfarm import events, metrics, presence
from vidfarm.catalog import FAILED, PROCESSING, QUEUED
from vidfarm.farm import Farm
from vidfarm.jobs import enqueue, new_job_id

log = logging.getLogger(__name__)

# A freshly accepted video is written to the catalog a moment before its job reaches Redis.
QUEUED_GRACE_S = 10.0
DEAD_JOB_STATES = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


class Reconciler:
    def __init__(self, farm: Farm, clock=time.monotonic) -> None:
        self.farm = farm
        self.clock = clock
        self._orphaned_since: dict[str, float] = {}

    def step(self) -> int:
        """One pass; returns how many videos were re-queued or failed."""
        videos = self.farm.catalog.active()
        working = {w.video_id: w for w in presence.all_workers(self.farm.redis) if w.video_id}
        fixed = 0
        for video in videos:
            if video["status"] == QUEUED and self._job_lost(video):
                fixed += self._requeue(video, "its job is missing from Redis")
            elif video["status"] == PROCESSING and self._worker_lost(video, working):
                fixed += self._retry_or_fail(video)
        live = {v["job_id"] for v in videos}
        self._orphaned_since = {k: v for k, v in self._orphaned_since.items() if k in live}
        self._sweep_abandoned_uploads()
        return fixed

    # -- detection --------------------------------------------------------------------------------

    def _job_lost(self, video: dict[str, Any]) -> bool:
        if _age_s(video["updated_at"]) < QUEUED_GRACE_S:
            return False
        job = Job.fetch_many([video["job_id"]], connection=self.farm.rq_redis)[0]
        return job is None or job.get_status(refresh=False) in DEAD_JOB_STATES

    def _worker_lost(self, video: dict[str, Any], working: dict[str, presence.WorkerInfo]) -> bool:
        """Lost once no live worker has reported this video for a full heartbeat TTL (a Redis wipe
        removes presence hashes for up to one heartbeat; that alone must not look like a death)."""
        worker = working.get(video["id"])
        if worker is not None and worker.name == video["worker"]:
            self._orphaned_since.pop(video["job_id"], None)
            return False
        first_seen = self._orphaned_since.setdefault(video["job_id"], self.clock())
        return self.clock() - first_seen >= self.farm.settings.worker_heartbeat_ttl_s

    # -- actions ----------------------------------------------------------------------------------

    def _sweep_abandoned_uploads(self) -> None:
        """Partial uploads nobody writes to any more: their API process died mid-upload. A live
        upload touches its file at least every idle timeout, or the API gives up on it itself."""
        cutoff = time.time() - (2 * self.farm.settings.upload_idle_timeout_s + 60)
        for part in self.farm.storage.incoming.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    log.info("removed abandoned partial upload %s", part.name)

    def _retry_or_fail(self, video: dict[str, Any]) -> int:
        if video["attempts"] < self.farm.settings.max_attempts:
            metrics.TRANSCODES.labels("unknown", "retried").inc()  # the lost worker took its encoder name along
            return self._requeue(video, f"worker {video['worker']} stopped working on it")
        message = f"the worker was lost during each of {video['attempts']} attempts"
        failed = self.farm.catalog.update(
            video["id"], expect={"job_id": video["job_id"], "status": PROCESSING},
            status=FAILED, error_code="worker_lost", error_message=message,
        )
        if failed:
            log.warning("video %s failed: %s", video["id"], message)
            metrics.FAILURES.labels("worker_lost").inc()
            events.publish(self.farm.redis, video["id"], "status", status=FAILED,
                           error={"code": "worker_lost", "message": message})
        return int(failed)

    def _requeue(self, video: dict[str, Any], why: str) -> int:
        job_id = new_job_id(video["id"])
        moved = self.farm.catalog.update(
            video["id"], expect={"job_id": video["job_id"], "status": video["status"]},
            status=QUEUED, job_id=job_id, worker=None, progress=0.0,
        )
        if not moved:
            return 0
        log.info("video %s re-queued (attempt %d done): %s", video["id"], video["attempts"], why)
        self._forget_job(video["job_id"])
        enqueue(self.farm.rq_redis, self.farm.settings, {**video, "job_id": job_id}, job_id)
        metrics.JOBS_ENQUEUED.labels(video["queue"]).inc()
        return 1


    def _forget_job(self, job_id: str) -> None:
        """Drop the superseded attempt's RQ job, so RQ does not later count it as failed
        (abandoned) when the video was in fact run again."""
        try:
            job = Job.fetch_many([job_id], connection=self.farm.rq_redis)[0]
            if job is not None:
                job.delete()
        except Exception as exc:  # noqa: BLE001 - bookkeeping only; the catalog already moved on
            log.debug("could not delete superseded job %s: %s", job_id, exc)


def _age_s(iso: str) -> float:
    stamp = datetime.fromisoformat(iso)
    return (datetime.now(UTC) - stamp).total_seconds()

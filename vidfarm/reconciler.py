"""The reconciler: makes Redis agree with the catalog again after anything went wrong.

The catalog is the truth, task by task, and a task that is not done is judged by a positive sign of
life, never by an absence alone. A `queued` task lives while its job waits in its queue's list, or a
live worker reports that it started it, or it is deferred on tasks that are not all done; with none of
these for `lost_job_grace_s` (a worker that popped it and then froze or died: the job is in no list and
started nowhere, though RQ still says `queued`), or at once when its job is gone from Redis or dead
(Redis was wiped, the enqueue failed), it is queued again. A task that is `running` but whose worker is gone,
or is no longer working on it (killed worker, node loss, OOM, a crash of the job), runs again, up to
`max_attempts`, after which the video fails with a reason; only that task runs again, the others
keep what they finished. Finalize runs once every other task is done: RQ's dependency normally
starts it; when the graph was repaired it is queued again here. Every change is a compare-and-set on
the task's job id, so a reconciler racing a worker (or another reconciler) never runs a task twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rq.job import Job, JobStatus
from sqlalchemy.exc import OperationalError

from vidfarm import lifecycle, metrics, ownership, presence, rerun, tus
from vidfarm.catalog import Task
from vidfarm.farm import Farm
from vidfarm.jobs import enqueue_graph, plan_tasks, total_frames
from vidfarm.queues import announce, tenant_queues, waiting_job_ids
from vidfarm.states import TaskKind, TaskStatus, VideoStatus
from vidfarm.storage import StorageUnavailable

log = logging.getLogger(__name__)

# A freshly accepted video is written to the catalog a moment before its jobs reach Redis.
QUEUED_GRACE_S = 10.0
DEAD_JOB_STATES = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FINISHED}
# Stored media without a catalog row is looked for this often: it takes a listing of every video's
# folder (one request per 1,000 on S3). It is only reported, never removed (`vidfarm.ownership`).
ORPHANS_REPORT_EVERY_S = 3600.0


class Reconciler:
    def __init__(self, farm: Farm, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.farm = farm
        self.clock = clock
        self.wall = wall  # epoch seconds, against which stored media and rows are aged
        self._orphaned_since: dict[str, float] = {}
        self._silent_since: dict[str, float] = {}  # queued jobs with no sign of life, since when
        self._next_orphan_report = clock()  # the first pass looks: a restart often follows a crash

    def step(self) -> int:
        """One pass; returns how many tasks were re-queued or videos failed."""
        working = {w.job_id: w for w in presence.all_workers(self.farm.redis) if w.job_id}
        fixed, live = 0, set()
        videos = self.farm.catalog.active()
        # One query for every active video's tasks: a pass costs the catalog the same however many
        # videos are in the farm (one query per video made the reconciler its biggest reader).
        tasks_of = self.farm.catalog.tasks_of([video["id"] for video in videos])
        waiting = self._waiting_jobs(videos, tasks_of)
        for video in videos:
            tasks = tasks_of[video["id"]]
            live |= {t.job_id for t in tasks}
            try:
                fixed += self._repair(video, tasks, working, waiting) if tasks else self._plan(video)
            except OperationalError as exc:
                # A row another session holds (a worker frozen inside its transaction) times out
                # (lock_timeout; SQLite's busy timeout): this video waits for the next pass, the
                # others are repaired now.
                log.warning("video %s not reconciled this pass: %s", video["id"], type(exc.orig).__name__)
        self._orphaned_since = {k: v for k, v in self._orphaned_since.items() if k in live}
        self._silent_since = {k: v for k, v in self._silent_since.items() if k in live}
        now, idle_s = self.wall(), self.farm.settings.upload_idle_timeout_s
        self._sweep(self.sweep_receiving, now - presence.abandoned_after_s(idle_s), "abandoned uploads")
        tus.sweep_expired(self.farm)
        if self.clock() >= self._next_orphan_report:
            self._next_orphan_report = self.clock() + ORPHANS_REPORT_EVERY_S
            self._sweep(lambda _: self.report_orphans(), now, "orphaned media")
        return fixed

    def _repair(self, video: dict[str, Any], tasks: list[Task], working: dict[str, Any],
                waiting: set[str]) -> int:
        fixed = 0
        for task in tasks:
            if task.kind == TaskKind.FINALIZE:
                continue
            if task.status == TaskStatus.QUEUED and (why := self._job_lost(task, tasks, working, waiting)):
                fixed += self._requeue(video, task, why)
            elif task.status == TaskStatus.RUNNING and self._worker_lost(task, working):
                if task.attempts >= self.farm.settings.max_attempts:
                    return fixed + self._fail(video, task)
                metrics.TRANSCODES.labels("unknown", "retried").inc()  # the lost worker took its encoder name
                fixed += self._requeue(video, task, f"worker {task.worker} stopped working on it")
        if fixed:  # a re-queued task re-queues finalize too (a new job id): read what it is now
            tasks = self.farm.catalog.tasks(video["id"])
        return fixed + self._repair_finalize(video, tasks, working, waiting)

    def _repair_finalize(self, video: dict[str, Any], tasks: list[Task], working: dict[str, Any],
                         waiting: set[str]) -> int:
        finalize = next(t for t in tasks if t.kind == TaskKind.FINALIZE)
        if finalize.status == TaskStatus.RUNNING:
            if not self._worker_lost(finalize, working):
                return 0
            if finalize.attempts >= self.farm.settings.max_attempts:
                return self._fail(video, finalize)
            return self._requeue(video, finalize, f"worker {finalize.worker} stopped working on it")
        if finalize.status != TaskStatus.QUEUED or not (why := self._job_lost(finalize, tasks, working, waiting)):
            return 0
        return self._requeue(video, finalize, why)

    # -- detection --------------------------------------------------------------------------------

    def _job_status(self, job_id: str) -> JobStatus | None:
        job = Job.fetch_many([job_id], connection=self.farm.rq_redis)[0]
        return None if job is None else job.get_status(refresh=False)

    def _waiting_jobs(self, videos: list[dict[str, Any]], tasks_of: dict[str, list[Task]]) -> set[str]:
        """The job ids waiting in the queues of the videos that have queued tasks (their tenants'
        queues, `vidfarm.queues.tenant_queues`): one LRANGE per queue and pass (an LPOS per task would
        cost Redis a command per queued task, and each one scans the list anyway). Their tenants are
        announced again, in the same pipeline, so a job is never left in a queue no worker reads: a job
        counted alive here is one a worker will take."""
        waiting = [video for video in videos if any(t.status == TaskStatus.QUEUED for t in tasks_of[video["id"]])]
        if not waiting:
            return set()
        for pool in {video["queue"] for video in waiting}:
            announce(self.farm.rq_redis, pool, [v["tenant"] for v in waiting if v["queue"] == pool], wake=False)
        names = [name for video in waiting for name in tenant_queues(video["queue"], video["tenant"])]
        return waiting_job_ids(self.farm.rq_redis, names)

    def _job_lost(self, task: Task, tasks: list[Task], working: dict[str, Any],
                  waiting: set[str]) -> str | None:
        """Why a queued task's job will never run, or None while it shows a sign of life (or was
        queued too recently to tell)."""
        job_id = task.job_id
        if job_id in waiting or job_id in working:
            self._silent_since.pop(job_id, None)
            return None
        silent_since = self._silent_since.setdefault(job_id, self.clock())
        if _age_s(task.updated_at) < QUEUED_GRACE_S:
            return None
        status = self._job_status(job_id)
        if status is None or status in DEAD_JOB_STATES:
            return "its job is missing from Redis"
        if status == JobStatus.DEFERRED:
            self._silent_since.pop(job_id, None)
            # Finalize waits on the others. Once the catalog says they are all done it waits on jobs
            # that were replaced, which RQ would never release.
            if any(t.status != TaskStatus.DONE for t in tasks if t.kind != TaskKind.FINALIZE and t.name != task.name):
                return None
            return "its job can no longer start"
        # RQ still says queued (or started), yet it is in no list and no live worker has it: a worker
        # popped it and froze or died. A live one reports it within moments of the pop.
        if self.clock() - silent_since < self.farm.settings.lost_job_grace_s:
            return None
        grace_s = self.farm.settings.lost_job_grace_s
        return f"its job ({status.value}) was in no queue and on no live worker for {grace_s:g} s"

    def _worker_lost(self, task: Task, working: dict[str, presence.WorkerInfo]) -> bool:
        """Lost once no live worker has reported this attempt for a full heartbeat TTL (a Redis wipe
        removes presence hashes for up to one heartbeat; that alone must not look like a death)."""
        worker = working.get(task.job_id)
        if worker is not None and worker.name == task.worker:
            self._orphaned_since.pop(task.job_id, None)
            return False
        first_seen = self._orphaned_since.setdefault(task.job_id, self.clock())
        return self.clock() - first_seen >= self.farm.settings.worker_heartbeat_ttl_s

    # -- actions ----------------------------------------------------------------------------------

    def _sweep(self, sweep: Callable[[float], int], older_than: float, what: str) -> None:
        """One sweep of storage; a store that is down, or a catalog that is locked or away, now is
        swept on a later pass."""
        try:
            swept = sweep(older_than)
        except (StorageUnavailable, OperationalError) as exc:
            log.warning("%s not swept: %s", what, exc)
            return
        if swept:
            log.info("removed %d %s", swept, what)

    def sweep_receiving(self, older_than: float) -> int:
        """Uploads whose row says they are still `receiving` but nobody received them since
        `older_than`: their API died mid-body (or could not remove a refused one). Their media goes, then
        the row (its client got no 201 and holds no id). The only media the farm removes on its own,
        besides expired resumable uploads: what a row of this catalog says is an upload in flight.
        A live upload says so in Redis (on a slow link an S3 part takes long to fill)."""
        swept, storage = 0, self.farm.storage
        for video in self.farm.catalog.active((VideoStatus.RECEIVING,)):
            if _epoch_s(video["updated_at"]) >= older_than:
                continue
            if presence.upload_alive(self.farm.redis, video["id"]):
                continue
            written = storage.last_written(video["id"])
            if written is not None and written >= older_than:
                continue
            storage.delete_video(video["id"])
            if self.farm.catalog.forget(video["id"], was=VideoStatus.RECEIVING):
                log.info("video %s: upload abandoned by its API; its partial media removed", video["id"])
                metrics.UPLOADS.labels("abandoned").inc()
                swept += 1
        return swept

    def report_orphans(self) -> int:
        """Count (log and gauge) the media whose id this catalog has no row for: never removed here.
        An API that died after storing a body and before recording it leaves none any more (the row
        comes first); what is left is another farm's, a restored backup's, or an operator's to judge."""
        found = ownership.orphans(self.farm.storage, self.farm.catalog)
        metrics.STORAGE_ORPHANS.set(len(found))
        if found:
            log.warning("storage %s holds %d video id(s) this catalog does not know (e.g. %s); they are kept: "
                        "see `vidfarm storage orphans`", self.farm.storage.location(), len(found), found[0])
        return 0

    def _fail(self, video: dict[str, Any], task: Task) -> int:
        message = f"the worker was lost during each of {task.attempts} attempts at {task.name}"
        return int(lifecycle.fail(self.farm, video["id"], "worker_lost", message, expect={"status": video["status"]}))

    def _requeue(self, video: dict[str, Any], task: Task, why: str) -> int:
        again = rerun.run_again(self.farm, video, task)
        if again is None:
            return 0
        log.info("video %s: %s re-queued (attempt %d done): %s", video["id"], task.name, task.attempts, why)
        return 1

    def _plan(self, video: dict[str, Any]) -> int:
        """A video accepted before chunked encoding existed: plan its graph now and queue it."""
        settings = self.farm.settings
        tasks = plan_tasks(video["id"], video["duration_s"], video["fps"], video["audio_codec"] is not None,
                           settings.chunk_seconds, settings.pool_max_workers)
        self.farm.catalog.add_tasks(video["id"], tasks)
        self.farm.catalog.update(video["id"], expect={"status": video["status"]},
                                 total_frames=total_frames(video["duration_s"], video["fps"]))
        enqueue_graph(self.farm.rq_redis, settings, video, tasks)
        log.info("video %s: planned %d tasks", video["id"], len(tasks))
        return 1


def _epoch_s(iso: str) -> float:
    stamp = datetime.fromisoformat(iso)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _age_s(iso: str) -> float:
    return time.time() - _epoch_s(iso)

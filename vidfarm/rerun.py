"""Running a task of a video's graph again: a new job id in the catalog, its job queued, and finalize
queued again to wait for it. The reconciler does it for tasks whose job or worker was lost; finalize
does it for done chunks that recorded no segments (encoded by a vidfarm from before a rolling upgrade).
"""

from __future__ import annotations

import logging
from typing import Any

from rq import get_current_job
from rq.job import Job

from vidfarm import lifecycle, metrics
from vidfarm.catalog import Task
from vidfarm.farm import Farm
from vidfarm.jobs import enqueue_task, notify
from vidfarm.states import ACTIVE, TaskKind, TaskStatus

log = logging.getLogger(__name__)


def run_again(farm: Farm, video: dict[str, Any], task: Task) -> Task | None:
    """The task under a new job id, queued: finalize waiting on the jobs of today's attempts, any other
    task at once (and finalize queued again to wait for it). None when the task moved meanwhile, or the
    video ended while this ran (then nothing of it is left queued)."""
    again = lifecycle.retry(farm, video["id"], task)
    if again is None:
        return None
    forget_job(farm, task.job_id)
    if task.kind == TaskKind.FINALIZE:
        enqueue_task(farm.rq_redis, farm.settings, video, again, depends_on=unfinished_jobs(farm, video["id"]))
    else:
        enqueue_task(farm.rq_redis, farm.settings, video, again)
        requeue_finalize_after(farm, video)
    if drop_if_ended(farm, video["id"], again.job_id):
        return None
    notify(farm.rq_redis, video)
    metrics.JOBS_ENQUEUED.labels(video["queue"]).inc()
    return again


def requeue_finalize_after(farm: Farm, video: dict[str, Any]) -> None:
    """A replaced job leaves finalize waiting on a job that will never run: queue it again, waiting
    on the jobs of today's attempts."""
    finalize = farm.catalog.task(video["id"], TaskKind.FINALIZE)
    if finalize is None or finalize.status != TaskStatus.QUEUED:
        return
    again = lifecycle.retry(farm, video["id"], finalize)
    if again is not None:
        forget_job(farm, finalize.job_id)
        enqueue_task(farm.rq_redis, farm.settings, video, again, depends_on=unfinished_jobs(farm, video["id"]))
        drop_if_ended(farm, video["id"], again.job_id)


def drop_if_ended(farm: Farm, video_id: str, job_id: str) -> bool:
    """A video that failed or was canceled while its task was queued again: its stop read the
    catalog's job ids before this job existed, or deleted the job taken for lost. Drop the new one
    too, so nothing of an ended video waits in a queue."""
    row = farm.catalog.get(video_id)
    if row is not None and row["status"] in ACTIVE:
        return False
    forget_job(farm, job_id)
    return True


def unfinished_jobs(farm: Farm, video_id: str) -> list[str]:
    """Jobs finalize must wait for: those of unfinished tasks that RQ still knows (a running task
    whose job hash was wiped cannot be waited on; the reconciler's `_job_lost` catches that case)."""
    ids = [t.job_id for t in farm.catalog.tasks(video_id)
           if t.kind != TaskKind.FINALIZE and t.status != TaskStatus.DONE]
    jobs = Job.fetch_many(ids, connection=farm.rq_redis) if ids else []
    return [job.id for job in jobs if job is not None]


def forget_job(farm: Farm, job_id: str | None) -> None:
    """Drop the superseded attempt's RQ job, so RQ does not later count it as failed (abandoned) when
    the task was in fact run again. Never the job running this code (finalize queueing chunks again):
    its worker still records how it ended."""
    current = get_current_job()
    if job_id is None or (current is not None and current.id == job_id):
        return
    try:
        job = Job.fetch_many([job_id], connection=farm.rq_redis)[0]
        if job is not None:
            job.delete()
    except Exception as exc:  # noqa: BLE001 - bookkeeping only; the catalog already moved on
        log.debug("could not delete superseded job %s: %s", job_id, exc)

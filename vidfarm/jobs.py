"""A video's transcode as a small graph of RQ jobs, planned and queued from the catalog.

One `chunk` job per chunk of the picture (all rungs from one decode), one `audio` job (the whole
track once, so joins have no gaps or priming clicks), and one `finalize` job that depends on all of
them (an RQ `Dependency`) and stitches, packages and publishes. A short video is one chunk.

The uploader enqueues by dotted path so it never imports ffmpeg code; a job's arguments are only the
video id, the task name and the attempt's job id: everything else is read from the catalog, the
truth. RQ's dependency is the fast path; the reconciler repairs the graph from the catalog when a
job was lost (a wiped Redis, a killed worker).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue
from rq.job import Dependency, Job, JobStatus

from vidfarm import cancel
from vidfarm.catalog import Task
from vidfarm.chunks import expected_frames, output_fps, plan_chunks
from vidfarm.settings import Settings
from vidfarm.states import TaskKind, TaskStatus

if TYPE_CHECKING:
    from vidfarm.farm import Farm

log = logging.getLogger(__name__)

JOB_FUNCTION = "transcoder.job.run_task"
ENQUEUED_CHANNEL = "vidfarm:enqueued"


def new_job_id(video_id: str, task: str = "graph") -> str:
    """Every attempt of a task gets its own job id; the catalog records the current one, so a stale
    duplicate of an older attempt recognises itself and stops."""
    return f"{video_id}-{task}-{uuid.uuid4().hex[:8]}"


def chunk_name(index: int) -> str:
    return f"chunk-{index:05d}"


def plan_tasks(video_id: str, duration_s: float, fps: float, has_audio: bool, chunk_seconds: float,
               workers: int = 1) -> list[Task]:
    """A new video's tasks, queued, each with the job id of its first attempt; `workers` is the most
    its pool runs (the chunk plan gives a long video at least that many chunks)."""
    rate = output_fps(fps)
    tasks = []
    for span in plan_chunks(duration_s, rate, chunk_seconds, workers):
        start_s = float(Fraction(span.start_frame) / rate)
        length_s = float(Fraction(span.frames) / rate) if span.frames else max(0.0, duration_s - start_s)
        tasks.append(Task(chunk_name(span.index), TaskKind.CHUNK, start_frame=span.start_frame, frames=span.frames,
                          duration_s=length_s))
    kinds = [TaskKind.AUDIO, TaskKind.FINALIZE] if has_audio else [TaskKind.FINALIZE]
    tasks += [Task(kind.value, kind, duration_s=duration_s) for kind in kinds]  # the whole source each
    return [dataclasses.replace(t, video_id=video_id, job_id=new_job_id(video_id, t.name)) for t in tasks]


def total_frames(duration_s: float, fps: float) -> int:
    return expected_frames(duration_s, output_fps(fps))


def enqueue_task(
    rq_redis: redis.Redis, settings: Settings, video: dict[str, Any], task: Task, depends_on: Sequence[str] = (),
) -> None:
    """Queue the task's current attempt (`task.job_id`)."""
    queue = Queue(video["queue"], connection=rq_redis)
    queue.enqueue(
        JOB_FUNCTION,
        video["id"],
        task.name,
        task.job_id,
        job_id=task.job_id,
        job_timeout=settings.job_timeout_s(task.duration_s),
        depends_on=Dependency(jobs=list(depends_on)) if depends_on else None,
        result_ttl=3600,
        failure_ttl=24 * 3600,
        description=f"{task.name} of {video['id']}",
    )


def enqueue_graph(rq_redis: redis.Redis, settings: Settings, video: dict[str, Any],
                  tasks: Sequence[Task]) -> None:
    """Queue every task not done yet; finalize waits for the others (RQ runs it when they succeed)."""
    pending = [t for t in tasks if t.status != TaskStatus.DONE and t.kind != TaskKind.FINALIZE]
    for task in pending:
        enqueue_task(rq_redis, settings, video, task)
    finalize = next(t for t in tasks if t.kind == TaskKind.FINALIZE)
    enqueue_task(rq_redis, settings, video, finalize, depends_on=[t.job_id for t in pending if t.job_id])
    notify(rq_redis, video["queue"])


def notify(rq_redis: redis.Redis, queue: str) -> None:
    # Wakes the autoscaler now instead of at its next resync.
    rq_redis.publish(ENQUEUED_CHANNEL, queue)


def stop_video(farm: Farm, video_id: str, keep: str | None = None) -> None:
    """Stops every task of a video that failed or is being canceled: the flag stops running ffmpegs
    within a second, queued and deferred jobs are dropped from Redis. `keep` is the caller's own job.
    Raises RedisError when Redis is away (the API then answers 503 and applies nothing)."""
    cancel.request(farm.redis, video_id)
    ids = [t.job_id for t in farm.catalog.tasks(video_id) if t.job_id and t.job_id != keep]
    for job in Job.fetch_many(ids, connection=farm.rq_redis) if ids else []:
        if job is not None and job.get_status(refresh=False) != JobStatus.STARTED:
            job.delete()


def stop_failed_video(farm: Farm, video_id: str, keep: str | None = None) -> None:
    try:
        stop_video(farm, video_id, keep)
    except redis.RedisError as exc:
        # The catalog already says the video failed: stale jobs find that out when they run.
        log.warning("video %s: could not drop its other jobs: %s", video_id, exc)

"""The transcoding job as the uploader queues it and the worker runs it.

The uploader enqueues by dotted path so it never imports ffmpeg code; the payload is only the video
id and the attempt's job id: everything else is read from the catalog, the truth.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis
from rq import Queue

from vidfarm.settings import Settings

JOB_FUNCTION = "transcoder.job.transcode"
ENQUEUED_CHANNEL = "vidfarm:enqueued"


def new_job_id(video_id: str) -> str:
    """Every attempt gets its own job id; the catalog records the current one, so a stale
    duplicate of an older attempt recognises itself and stops."""
    return f"{video_id}-{uuid.uuid4().hex[:8]}"


def enqueue(rq_redis: redis.Redis, settings: Settings, video: dict[str, Any], job_id: str) -> None:
    queue = Queue(video["queue"], connection=rq_redis)
    queue.enqueue(
        JOB_FUNCTION,
        video["id"],
        job_id,
        job_id=job_id,
        job_timeout=settings.job_timeout_s(video["duration_s"]),
        result_ttl=3600,
        failure_ttl=24 * 3600,
        description=f"transcode {video['id']}",
    )
    # Wakes the autoscaler now instead of at its next resync.
    rq_redis.publish(ENQUEUED_CHANNEL, video["queue"])

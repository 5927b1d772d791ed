"""Per-queue job counts as RQ keeps them: waiting in the list, running in the StartedJobRegistry
(which KEDA's LLEN never sees), failed in the FailedJobRegistry."""

from __future__ import annotations

import redis
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry


def queue_counts(rq_redis: redis.Redis, name: str) -> dict[str, int]:
    return {
        "queued": Queue(name, connection=rq_redis).count,
        "running": StartedJobRegistry(name, connection=rq_redis).count,
        "failed": FailedJobRegistry(name, connection=rq_redis).count,
    }

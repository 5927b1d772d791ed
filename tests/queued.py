"""What tests read of a pool's queues, whichever derived queue (first chunks, tenants) a job is in."""

from __future__ import annotations

from rq import Queue
from rq.job import Job

from vidfarm.farm import Farm
from vidfarm.queues import pool_queues


def queued_ids(farm: Farm, pool: str = "cpu") -> list[str]:
    """The jobs waiting in every queue of the pool, in the order of its queues."""
    return [job_id for name in pool_queues(farm.rq_redis, pool, with_work_only=False)
            for job_id in Queue(name, connection=farm.rq_redis).job_ids]


def deferred_ids(farm: Farm, pool: str = "cpu") -> list[str]:
    return [job_id for name in pool_queues(farm.rq_redis, pool, with_work_only=False)
            for job_id in Queue(name, connection=farm.rq_redis).deferred_job_registry.get_job_ids()]


def queue_of(farm: Farm, job_id: str) -> Queue:
    """The queue a job was queued in (its RQ origin)."""
    return Queue(Job.fetch(job_id, connection=farm.rq_redis).origin, connection=farm.rq_redis)


def take(farm: Farm, job_id: str) -> None:
    """What a worker's pop does to a waiting job (without running it): it leaves its queue's list."""
    assert farm.rq_redis.lrem(queue_of(farm, job_id).key, 0, job_id) == 1

"""What the controller sees of a pool: queue depth from RQ (every queue derived from the pool's: first
chunks and tenants, `vidfarm.queues`), worker states from presence, and the estimated work left from
the catalog's source durations."""

from __future__ import annotations

import time
from collections.abc import Callable

from autoscaler.backend import WorkerRef
from autoscaler.policy import PoolConfig, Snapshot
from vidfarm import metrics, presence
from vidfarm.farm import Farm
from vidfarm.queues import FIRST, pool_counts
from vidfarm.states import WorkerState

RUNNING_STATES = (WorkerState.BUSY, WorkerState.DRAINING)


class FarmObserver:
    """`observe(pool)` for the controller. `cost_factor` turns seconds of source video into seconds
    of worker time (about 1 for x264 veryfast at 1080p on one core; lower on NVENC)."""

    def __init__(
        self, farm: Farm, *, cost_factor: float = 1.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.farm = farm
        self.cost_factor = cost_factor
        self.clock = clock

    def __call__(self, pool: PoolConfig) -> tuple[Snapshot, list[WorkerRef]]:
        queued = first = 0
        for name in pool.queues:
            counts = pool_counts(self.farm.rq_redis, name)
            for state in ("queued", "running", "failed"):
                metrics.QUEUE_JOBS.labels(name, state).set(counts[state])
            queued += counts["queued"]
            first += counts[FIRST]
        workers = [w for w in presence.all_workers(self.farm.redis) if w.pool == pool.name]
        busy = sum(1 for w in workers if w.state in RUNNING_STATES)
        idle = sum(1 for w in workers if w.state == WorkerState.IDLE)
        for state in WorkerState:
            metrics.WORKERS.labels(pool.name, state).set(sum(1 for w in workers if w.state == state))
        queued_s, running_s = self.farm.catalog.work_estimate(pool.queues)
        snapshot = Snapshot(
            now=self.clock(),
            queued_jobs=queued,
            queued_first=first,
            running_jobs=busy,
            idle_workers=idle,
            busy_workers=busy,
            current_replicas=0,  # the controller asks the backend itself, once per pass
            queued_work_s=queued_s * self.cost_factor,
            running_work_s=running_s * self.cost_factor,
        )
        refs = [WorkerRef(name=w.name, state=w.state, pod=w.host, pid=w.pid) for w in workers]
        return snapshot, refs

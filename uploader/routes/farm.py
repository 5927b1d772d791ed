"""`GET /v1/farm`: the queues, the workers and the autoscaler's view of its pools.

Every API key is a tenant, and the view is theirs: the numbers (queue depths, pools, which workers are
busy) are the farm's and stay whole, but a worker names the video it transcodes only to the tenant
that owns it; another tenant's video id says what they upload and when.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from rq import Queue

from uploader.deps import FarmDep, Tenant
from uploader.resources import ERRORS, FarmOut
from vidfarm import presence
from vidfarm.farm import Farm
from vidfarm.queues import FIRST, pool_counts, pool_of

router = APIRouter(tags=["farm"], responses=ERRORS)


@router.get("/v1/farm", response_model=FarmOut)
def farm_view(tenant: Tenant, farm: FarmDep) -> dict[str, Any]:
    return farm_snapshot(farm, tenant)


def farm_snapshot(farm: Farm, tenant: str) -> dict[str, Any]:
    workers = presence.all_workers(farm.redis)
    busy_with = [w.video_id for w in workers if w.video_id]
    own = farm.catalog.owned(tenant, busy_with) if busy_with else set()
    names = set(farm.settings.served_queues) | {q for w in workers for q in w.queues.split(",") if q}
    # Derived queues (first chunks, tenants: `vidfarm.queues`) count in their pool's; a tenant sees no
    # other tenant's queue.
    names |= {pool_of(q.name) for q in Queue.all(connection=farm.rq_redis)}
    queues = {name: _without_first(pool_counts(farm.rq_redis, name)) for name in sorted(names)}
    raw = farm.redis.get(presence.AUTOSCALER_STATUS_KEY)
    return {
        "queues": queues,
        "workers": [_as_seen_by(w, own) for w in workers],
        "autoscaler": json.loads(raw) if raw else None,
    }


def _without_first(counts: dict[str, int]) -> dict[str, int]:
    return {state: count for state, count in counts.items() if state != FIRST}


def _as_seen_by(worker: presence.WorkerInfo, own: set[str]) -> dict[str, Any]:
    shown = worker.to_api()
    if shown["video_id"] not in own:
        shown["video_id"] = None  # busy all the same: the state says so, not whose video it is
    return shown

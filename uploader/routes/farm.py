"""`GET /v1/farm`: the queues, the workers and the autoscaler's view of its pools."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from rq import Queue

from uploader.deps import FarmDep, Tenant
from uploader.resources import ERRORS, FarmOut
from vidfarm import presence
from vidfarm.farm import Farm
from vidfarm.queues import queue_counts

router = APIRouter(tags=["farm"], responses=ERRORS)


@router.get("/v1/farm", response_model=FarmOut)
def farm_view(_tenant: Tenant, farm: FarmDep) -> dict[str, Any]:
    return farm_snapshot(farm)


def farm_snapshot(farm: Farm) -> dict[str, Any]:
    workers = presence.all_workers(farm.redis)
    names = set(farm.settings.served_queues) | {q for w in workers for q in w.queues.split(",") if q}
    names |= {q.name for q in Queue.all(connection=farm.rq_redis)}
    queues = {name: queue_counts(farm.rq_redis, name) for name in sorted(names)}
    raw = farm.redis.get(presence.AUTOSCALER_STATUS_KEY)
    return {
        "queues": queues,
        "workers": [w.to_api() for w in workers],
        "autoscaler": json.loads(raw) if raw else None,
    }

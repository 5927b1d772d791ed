"""Presence: each worker keeps a short-lived hash in Redis saying who it is and what it does, and
each regular upload in flight a short-lived key saying that an API still receives it.

The workers' hashes feed `GET /v1/farm`, the autoscaler (idle or busy, which pod) and the reconciler
(a processing video whose worker's hash has expired lost its worker). The uploads' keys keep the
reconciler from aborting a live multipart upload whose next part is slow to fill. Heartbeats
re-create both, so they survive a Redis wipe.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import redis

from vidfarm.states import WorkerState

PREFIX = "vidfarm:worker:"
UPLOAD_PREFIX = "vidfarm:upload:"
# The autoscaler's view of its pools (JSON), shown by `GET /v1/farm`.
AUTOSCALER_STATUS_KEY = "vidfarm:autoscaler:status"


@dataclass
class WorkerInfo:
    name: str
    pid: int
    host: str
    queues: str          # comma separated, in priority order
    encoder: str
    pool: str = ""        # the autoscaling pool (Deployment) this worker belongs to
    state: WorkerState = WorkerState.IDLE
    video_id: str = ""
    job_id: str = ""      # the attempt it runs: the reconciler tells a live task from a lost one by it
    metrics_url: str = ""

    def to_api(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "host": self.host,
            "queues": self.queues.split(","),
            "state": self.state,
            "video_id": self.video_id or None,
            "encoder": self.encoder,
            "pool": self.pool,
        }


def key(name: str) -> str:
    return PREFIX + name


def beat(conn: redis.Redis, info: WorkerInfo, ttl_s: int) -> None:
    mapping = {f.name: str(getattr(info, f.name)) for f in fields(info)}
    pipe = conn.pipeline()
    pipe.hset(key(info.name), mapping=mapping)
    pipe.expire(key(info.name), ttl_s)
    pipe.execute()


def remove(conn: redis.Redis, name: str) -> None:
    conn.delete(key(name))


def abandoned_after_s(upload_idle_timeout_s: float) -> float:
    """How long an upload nobody writes to waits before it counts as abandoned: an API gives up on a
    silent client after the idle timeout itself, so twice that (and a minute) means the API died."""
    return 2 * upload_idle_timeout_s + 60


def upload_beat(conn: redis.Redis, video_id: str, upload_idle_timeout_s: float) -> None:
    conn.set(UPLOAD_PREFIX + video_id, "1", ex=round(abandoned_after_s(upload_idle_timeout_s)))


def upload_done(conn: redis.Redis, video_id: str) -> None:
    conn.delete(UPLOAD_PREFIX + video_id)


def upload_alive(conn: redis.Redis, video_id: str) -> bool:
    return bool(conn.exists(UPLOAD_PREFIX + video_id))


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


def all_workers(conn: redis.Redis) -> list[WorkerInfo]:
    names = [k.decode() if isinstance(k, bytes) else k for k in conn.scan_iter(match=PREFIX + "*", count=500)]
    pipe = conn.pipeline()
    for name in names:
        pipe.hgetall(name)
    workers = []
    for raw in pipe.execute():
        data = _decode(raw)
        if not data.get("name"):
            continue  # expired between SCAN and HGETALL
        workers.append(
            WorkerInfo(
                name=data["name"], pid=int(data.get("pid") or 0), host=data.get("host", ""),
                queues=data.get("queues", ""), encoder=data.get("encoder", ""), pool=data.get("pool", ""),
                state=WorkerState(data.get("state", WorkerState.IDLE)), video_id=data.get("video_id", ""),
                job_id=data.get("job_id", ""),
                metrics_url=data.get("metrics_url", ""),
            )
        )
    return sorted(workers, key=lambda w: w.name)

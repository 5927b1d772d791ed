"""Progress and status events on Redis pub/sub, from workers to whoever listens (SSE clients)."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

log = logging.getLogger(__name__)


def channel(video_id: str) -> str:
    return f"vidfarm:events:{video_id}"


def publish(conn: redis.Redis, video_id: str, kind: str, **data: Any) -> None:
    """Best effort: a missed event costs a client one poll of the catalog, never correctness."""
    message = json.dumps({"type": kind, "id": video_id, **data})
    try:
        conn.publish(channel(video_id), message)
    except redis.RedisError as exc:
        log.debug("event for %s not published: %s", video_id, exc)

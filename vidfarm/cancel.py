"""Cancellation flags: the API raises one, the worker running the video sees it within a second."""

from __future__ import annotations

import redis

TTL_S = 7 * 24 * 3600


def key(video_id: str) -> str:
    return f"vidfarm:cancel:{video_id}"


def request(conn: redis.Redis, video_id: str) -> None:
    conn.set(key(video_id), "1", ex=TTL_S)


def requested(conn: redis.Redis, video_id: str) -> bool:
    return bool(conn.exists(key(video_id)))

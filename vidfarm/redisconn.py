"""Redis connections: one place that knows how to turn REDIS_URL into a client."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def connect(url: str, *, decode: bool = False) -> redis.Redis:
    """A client that retries briefly on connection errors: Redis restarts should be a blip.

    RQ needs raw bytes (`decode=False`); our own keys and pub/sub use strings.
    """
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


"""Server-Sent Events for one video, fed by the workers' Redis pub/sub messages.

The catalog is re-read now and then as well, so a message lost while the connection was down never
leaves a client waiting; the stream ends when the video is ready, failed or canceled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from uploader.resources import video_error
from vidfarm import events
from vidfarm.catalog import VideoRow
from vidfarm.farm import Farm
from vidfarm.states import TERMINAL, VideoStatus

RECHECK_S = 5.0
POLL_S = 1.0
RECONNECT_S = 2.0
KEEPALIVE_S = 15.0


def sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def _state(video: VideoRow) -> dict[str, Any]:
    return {"id": video["id"], "status": video["status"], "progress": video["progress"], "error": video_error(video)}


class _PubSubFeed:
    """The video's pub/sub channel, reconnecting quietly: while Redis is away the stream falls back
    to polling the catalog instead of dying."""

    def __init__(self, redis_url: str, channel: str) -> None:
        self.redis_url = redis_url
        self.channel = channel
        self.client: aioredis.Redis | None = None
        self.pubsub: aioredis.client.PubSub | None = None
        self._retry_at = 0.0

    @property
    def connected(self) -> bool:
        return self.pubsub is not None

    async def _connect(self) -> None:
        self._retry_at = time.monotonic() + RECONNECT_S
        try:
            self.client = aioredis.from_url(self.redis_url, decode_responses=True)
            self.pubsub = self.client.pubsub()
            await self.pubsub.subscribe(self.channel)
        except RedisError:
            await self.close()

    async def next(self, timeout: float) -> dict[str, Any] | None:
        if self.pubsub is None and time.monotonic() >= self._retry_at:
            await self._connect()
        if self.pubsub is None:
            await asyncio.sleep(timeout)
            return None
        try:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        except RedisError:
            await self.close()
            return None
        return json.loads(message["data"]) if message else None

    async def close(self) -> None:
        for closable in (self.pubsub, self.client):
            if closable is not None:
                with contextlib.suppress(RedisError, OSError):
                    await closable.aclose()
        self.pubsub = self.client = None


async def _read_catalog(farm: Farm, video_id: str) -> VideoRow | None | bool:
    """The row, None when it is gone, False when the database cannot answer right now."""
    try:
        return await run_in_threadpool(farm.catalog.get, video_id, cached=False)
    except SQLAlchemyError:
        return False


async def event_stream(farm: Farm, video: VideoRow, request: Request) -> AsyncIterator[str]:
    yield sse("status", _state(video))
    if video["status"] in TERMINAL:
        return
    feed = _PubSubFeed(farm.settings.redis_url, events.channel(video["id"]))
    try:
        last_check = last_sent = 0.0
        while not await request.is_disconnected():
            now = time.monotonic()
            # The catalog is re-read after (re)subscribing and then now and then, so nothing that
            # happened while no message could arrive is missed; without pub/sub it is polled.
            if now - last_check >= (RECHECK_S if feed.connected else POLL_S):
                last_check = now
                current = await _read_catalog(farm, video["id"])
                if current is None or (current and current["status"] in TERMINAL):
                    deleted = {"id": video["id"], "status": VideoStatus.CANCELED}
                    yield sse("status", _state(current) if current else deleted)
                    return
                if current and not feed.connected:
                    last_sent = now
                    yield sse("progress", _state(current))
            data = await feed.next(timeout=1.0)
            if data is None:
                if now - last_sent >= KEEPALIVE_S:
                    last_sent = now
                    yield ": keepalive\n\n"
                continue
            last_sent = now
            yield sse(data.get("type", "progress"), data)
            if data.get("status") in TERMINAL:
                return
    finally:
        await feed.close()

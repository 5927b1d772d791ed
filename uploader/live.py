"""Server-Sent Events for one video, fed by the workers' Redis pub/sub messages.

The catalog is re-read now and then as well, so a message lost while the connection was down never
leaves a client waiting; the stream ends when the video is ready, failed or canceled.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request

from vidfarm import events
from vidfarm.catalog import TERMINAL
from vidfarm.farm import Farm

RECHECK_S = 5.0
KEEPALIVE_S = 15.0


def sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def _state(video: dict[str, Any]) -> dict[str, Any]:
    error = {"code": video["error_code"], "message": video["error_message"]} if video["error_code"] else None
    return {"id": video["id"], "status": video["status"], "progress": video["progress"], "error": error}


async def event_stream(farm: Farm, video: dict[str, Any], request: Request) -> AsyncIterator[str]:
    yield sse("status", _state(video))
    if video["status"] in TERMINAL:
        return
    client = aioredis.from_url(farm.settings.redis_url, decode_responses=True)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(events.channel(video["id"]))
        # Re-read after subscribing: anything that happened before the subscription is seen here.
        last_check = last_sent = 0.0
        while not await request.is_disconnected():
            now = time.monotonic()
            if now - last_check >= RECHECK_S:
                last_check = now
                current = await run_in_threadpool(farm.catalog.get, video["id"], cached=False)
                if current is None or current["status"] in TERMINAL:
                    yield sse("status", _state(current) if current else {"id": video["id"], "status": "canceled"})
                    return
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                if now - last_sent >= KEEPALIVE_S:
                    last_sent = now
                    yield ": keepalive\n\n"
                continue
            data = json.loads(message["data"])
            last_sent = now
            yield sse(data.get("type", "progress"), data)
            if data.get("status") in TERMINAL:
                return
    finally:
        await pubsub.aclose()
        await client.aclose()

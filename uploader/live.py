"""Server-Sent Events for one video, fed by the workers' Redis pub/sub messages.

Every stream of an API process listens through one `EventHub`: one pub/sub connection to Redis, one
task reading it, and in memory a bounded buffer per stream. A stream that falls behind, or that was
not listening while the connection was down, re-reads the catalog instead of replaying what it
missed; the catalog is re-read now and then as well, so a message lost on the way never leaves a
client waiting. The stream ends when the video is ready, failed or canceled.

Events: `status` first, `progress` as it goes, `playable` once (as soon as the stream knows the
video plays while processing, at once if it already does: the video's `playable_at` and signed
`playback` URLs, as `GET /v1/videos/{id}` shows them), and a last `status` at the end.

Each tenant may hold `max_event_streams_per_tenant` streams open on one API process (429 beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from uploader.errors import ApiError
from uploader.playback import is_growing, playback_urls
from uploader.resources import video_error
from vidfarm import events
from vidfarm.catalog import VideoRow
from vidfarm.farm import Farm
from vidfarm.states import TERMINAL, VideoStatus

log = logging.getLogger(__name__)

RECHECK_S = 5.0
POLL_S = 1.0
RECONNECT_S = 2.0
KEEPALIVE_S = 15.0
# The hub pings Redis when it heard nothing this long, and gives the connection up after twice that:
# a connection whose peer vanished without a reset would otherwise wait for messages forever.
HUB_PING_S = 10.0
# Messages a stream may have waiting; beyond, it skips to the catalog's current state (a progress
# event is a snapshot, so nothing but intermediate percentages is lost).
STREAM_BUFFER = 64
# Always subscribed (nobody publishes there), so the hub's connection is in subscriber mode from the start.
HUB_CHANNEL = events.channel("hub")


def sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def _state(video: VideoRow) -> dict[str, Any]:
    return {"id": video["id"], "status": video["status"], "progress": video["progress"], "error": video_error(video)}


def _playable(farm: Farm, video: VideoRow, base_url: str) -> str:
    """The `playable` event: workers publish only that it happened; the URLs are signed here."""
    return sse("playable", {**_state(video), "type": "playable", "playable_at": video["playable_at"],
                            "playback": playback_urls(farm.settings, video, base_url)})


class Subscription:
    """One stream's view of one video's channel: a bounded buffer the hub fills."""

    def __init__(self, hub: EventHub, channel: str) -> None:
        self.hub = hub
        self.channel = channel
        self.live = False  # subscribed on the hub's current connection: messages arrive
        self._stale = True  # something may have been missed: the stream must read the catalog
        self._messages: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()

    def take_stale(self) -> bool:
        stale, self._stale = self._stale, False
        return stale

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None after `timeout` (or when the stream should look at the catalog)."""
        if not self._messages:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        return self._messages.popleft() if self._messages else None

    def close(self) -> None:
        self.hub.unsubscribe(self)

    def _deliver(self, data: dict[str, Any]) -> None:
        if len(self._messages) >= STREAM_BUFFER:
            self._messages.clear()  # a slow reader: the catalog has the newest state anyway
            self._stale = True
        else:
            self._messages.append(data)
        self._wake.set()

    def _set_live(self, live: bool) -> None:
        # Both ways something may have been missed: messages before the subscription, or during the outage.
        self.live, self._stale = live, True
        self._wake.set()


class EventHub:
    """One Redis pub/sub connection per API process, shared by every live stream.

    A single task owns the connection: it subscribes to a video's channel when the first stream of
    that video opens and unsubscribes when the last one closes (reference counts), and hands each
    message to the streams of its channel. After a Redis restart it reconnects and subscribes again;
    the streams re-read the catalog then, so an outcome published during the outage is not missed.
    """

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, video_id: str) -> Subscription:
        """Call from the event loop that serves the streams; the hub starts there on first use."""
        self._ensure_running()
        subscription = Subscription(self, events.channel(video_id))
        self._subscriptions.setdefault(subscription.channel, set()).add(subscription)
        self._signal()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Idempotent: a stream may close its subscription twice."""
        same_channel = self._subscriptions.get(subscription.channel)
        if same_channel is None or subscription not in same_channel:
            return
        same_channel.discard(subscription)
        if not same_channel:
            del self._subscriptions[subscription.channel]
            self._signal()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
            self._task = None

    def _signal(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self._changed = asyncio.Event()
        self._task = loop.create_task(self._run(), name="vidfarm-event-hub")

    async def _run(self) -> None:
        while True:
            await self._wanted()
            try:
                await self._serve()
            except (RedisError, OSError) as exc:
                log.warning("live events: Redis pub/sub connection lost (%s); reconnecting", exc)
            except Exception:  # noqa: BLE001 - a bug must not end live events for the process's lifetime
                log.exception("live events: the hub failed; starting it again")
            self._mark_all(live=False)  # streams poll the catalog until the hub is back
            await asyncio.sleep(RECONNECT_S)

    async def _wanted(self) -> None:
        """Until some stream waits for events: a process nobody follows needs no connection (and
        logs nothing while Redis is away)."""
        assert self._changed is not None
        while not self._subscriptions:
            self._changed.clear()
            await self._changed.wait()

    async def _serve(self) -> None:
        """One connection's life: returns or raises when it is lost."""
        client = aioredis.from_url(self.redis_url, decode_responses=True, socket_connect_timeout=5,
                                   client_name="vidfarm-events")
        pubsub = client.pubsub()
        read: asyncio.Future[Any] | None = None
        try:
            await pubsub.subscribe(HUB_CHANNEL)
            subscribed: set[str] = set()
            heard = time.monotonic()
            read = asyncio.ensure_future(pubsub.get_message(timeout=None))
            while True:
                assert self._changed is not None
                self._changed.clear()
                subscribed = await self._sync(pubsub, subscribed)
                changed = asyncio.ensure_future(self._changed.wait())
                done, _ = await asyncio.wait({read, changed}, timeout=HUB_PING_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if read in done:
                    message, heard = read.result(), time.monotonic()
                    read = asyncio.ensure_future(pubsub.get_message(timeout=None))
                    self._dispatch(message)
                elif time.monotonic() - heard > 2 * HUB_PING_S:
                    raise ConnectionError(f"no answer from Redis for {2 * HUB_PING_S:.0f} s")
                elif not done:
                    await pubsub.ping()  # its answer arrives as a message, a sign of life
        finally:
            if read is not None:
                read.cancel()
                with contextlib.suppress(BaseException):
                    await read
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def _sync(self, pubsub: aioredis.client.PubSub, subscribed: set[str]) -> set[str]:
        """Subscribe to the channels streams wait on, unsubscribe from those nobody does any more.
        Only writes: the answers arrive through the reading task, as messages."""
        wanted = set(self._subscriptions)
        if added := wanted - subscribed:
            await pubsub.subscribe(*added)
        if dropped := subscribed - wanted:
            await pubsub.unsubscribe(*dropped)
        return wanted

    def _dispatch(self, message: dict[str, Any] | None) -> None:
        if not message:
            return
        kind, channel = message.get("type"), message.get("channel")
        if kind == "subscribe":
            for subscription in self._subscriptions.get(channel, ()):
                subscription._set_live(True)
        elif kind == "message":
            try:
                data = json.loads(message["data"])
            except (TypeError, ValueError):
                return  # not ours: workers publish JSON objects
            if isinstance(data, dict):
                for subscription in self._subscriptions.get(channel, ()):
                    subscription._deliver(data)

    def _mark_all(self, live: bool) -> None:
        for same_channel in self._subscriptions.values():
            for subscription in same_channel:
                subscription._set_live(live)


class StreamSlots:
    """How many live streams each tenant holds open on this process; 429 past the cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: Counter[str] = Counter()

    def take(self, tenant: str) -> Callable[[], None]:
        """A slot for `tenant`, and the function that gives it back (idempotent)."""
        if self._open[tenant] >= self.cap:
            raise ApiError(429, "too_many_streams",
                           f"at most {self.cap} live event streams per API key are open at once "
                           "(VIDFARM_MAX_EVENT_STREAMS_PER_TENANT): close one first", {"Retry-After": "5"})
        self._open[tenant] += 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                self._open[tenant] -= 1
                if self._open[tenant] <= 0:
                    del self._open[tenant]

        return give_back


class EventStreamResponse(StreamingResponse):
    """Gives back its tenant slot and hub subscription however the stream ends: finished, client gone,
    or cancelled before its first byte (where a generator's own `finally` would never run)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _read_catalog(farm: Farm, video_id: str) -> VideoRow | None | bool:
    """The row, None when it is gone, False when the database cannot answer right now."""
    try:
        return await run_in_threadpool(farm.catalog.get, video_id, cached=False)
    except SQLAlchemyError:
        return False


async def event_stream(farm: Farm, video: VideoRow, feed: Subscription, request: Request) -> AsyncIterator[str]:
    base_url = str(request.base_url)
    sent = _state(video)
    yield sse("status", sent)
    if video["status"] in TERMINAL:
        return
    playable = is_growing(video)
    if playable:
        yield _playable(farm, video, base_url)
    last_check = last_sent = time.monotonic()
    while not await request.is_disconnected():
        now = time.monotonic()
        # The catalog is re-read once subscribed (and after every reconnect or overflow), then now and
        # then, so nothing that happened while no message could arrive is missed; without pub/sub it
        # is polled.
        if feed.take_stale() or now - last_check >= (RECHECK_S if feed.live else POLL_S):
            last_check = now
            current = await _read_catalog(farm, video["id"])
            if current is None or (current and current["status"] in TERMINAL):
                deleted = {"id": video["id"], "status": VideoStatus.CANCELED}
                yield sse("status", _state(current) if current else deleted)
                return
            if current and not playable and is_growing(current):
                playable, last_sent = True, now
                yield _playable(farm, current, base_url)
            if current and _state(current) != sent:
                sent, last_sent = _state(current), now
                yield sse("progress", sent)
        data = await feed.next(timeout=1.0)
        if data is None:
            if now - last_sent >= KEEPALIVE_S:
                last_sent = now
                yield ": keepalive\n\n"
            continue
        if data.get("type") == "playable":
            # Announced by the catalog's next read (at once): it has the row to sign the URLs for.
            last_check = float("-inf")
            continue
        last_sent = now
        yield sse(data.get("type", "progress"), data)
        if data.get("status") in TERMINAL:
            return

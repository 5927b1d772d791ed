"""Live event streams (SSE) at scale: one Redis connection per API process for all of them, a cap per
API key, and events that keep coming after Redis restarts."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import redis

from tests.conftest import API_KEY, OTHER_KEY, ApiServer, upload, wait_until
from vidfarm import events
from vidfarm.farm import Farm
from vidfarm.localredis import LocalRedis
from vidfarm.settings import Settings

CAP = 60
MARKER = 12.5  # a progress no real transcode reports at that moment: it can only come through pub/sub


class Stream:
    """One client following a video's events in a thread, as a browser's EventSource would."""

    def __init__(self, url: str, key: str, video_id: str) -> None:
        self.url, self.key, self.video_id = url, key, video_id
        self.events: list[tuple[str, dict]] = []
        self.status_code: int | None = None
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=120) as client, client.stream(
                "GET", f"/v1/videos/{self.video_id}/events") as response:
            self.status_code = response.status_code
            kind = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    self.events.append((kind, json.loads(line.removeprefix("data: "))))
                    self.opened.set()
        self.opened.set()

    def ended(self) -> bool:
        return not self.thread.is_alive()

    def final_status(self) -> str | None:
        return self.events[-1][1].get("status") if self.events else None

    def saw_progress(self, progress: float) -> bool:
        return any(data.get("progress") == progress for _, data in self.events)


def open_streams(url: str, key: str, video_ids: list[str], count: int) -> list[Stream]:
    """`count` streams spread over the videos, each open (first event in) before the next starts."""
    streams = []
    for i in range(count):
        stream = Stream(url, key, video_ids[i % len(video_ids)])
        assert stream.opened.wait(30), "a stream sent no first event"
        streams.append(stream)
    return streams


def redis_clients(conn: redis.Redis) -> int:
    return len(conn.client_list())


def subscribed(conn: redis.Redis, video_ids: list[str]) -> bool:
    counts = dict(conn.pubsub_numsub(*(events.channel(v) for v in video_ids)))
    return all(counts.get(events.channel(v), 0) >= 1 for v in video_ids)


@pytest.fixture
def capped(settings: Settings) -> Iterator[ApiServer]:
    farm = Farm(replace(settings, max_event_streams_per_tenant=CAP))
    farm.settings.home.mkdir(parents=True, exist_ok=True)
    server = ApiServer(farm).start()
    yield server
    server.stop()


def test_many_streams_share_one_redis_connection_and_each_gets_every_event(capped, settings, clips, start_worker):
    conn = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    with capped.client() as http, capped.client(key=OTHER_KEY) as other:
        mine = [upload(http, clips["small"]).json()["id"] for _ in range(4)]
        theirs = upload(other, clips["small"]).json()["id"]
        before = redis_clients(conn)

        streams = open_streams(capped.url, API_KEY, mine, CAP)
        refused = http.get(f"/v1/videos/{mine[0]}/events")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_streams" and str(CAP) in refused.json()["error"]["message"]
        streams += open_streams(capped.url, OTHER_KEY, [theirs], 10)  # the cap is per API key
        wait_until(lambda: subscribed(conn, [*mine, theirs]), 15, "the API to subscribe to every video")
        assert redis_clients(conn) - before <= 2, "live streams opened their own Redis connections"

        # Fan-out: one message on a video's channel reaches every stream of that video.
        for video_id in [*mine, theirs]:
            events.publish(conn, video_id, "progress", status="queued", progress=MARKER)
        wait_until(lambda: all(s.saw_progress(MARKER) for s in streams), 30, "every stream to get the message")

        start_worker()
        wait_until(lambda: all(s.ended() for s in streams), 120, "every stream to end")
    assert {s.status_code for s in streams} == {200}
    assert {s.final_status() for s in streams} == {"ready"}
    assert all(any(d.get("status") == "processing" for _, d in s.events) for s in streams)
    # Slots are given back when streams end: the key may open streams again.
    with capped.client() as http, http.stream("GET", f"/v1/videos/{mine[0]}/events") as again:
        assert again.status_code == 200


def test_streams_get_events_again_after_redis_restarts(settings, clips, tmp_path):
    own = LocalRedis(tmp_path / "redis", persistent=False).start()
    farm = Farm(replace(settings, redis_url=own.url))
    farm.settings.home.mkdir(parents=True, exist_ok=True)
    server = ApiServer(farm).start()
    try:
        with server.client() as http:
            video_ids = [upload(http, clips["small"]).json()["id"] for _ in range(2)]
        streams = open_streams(server.url, API_KEY, video_ids, 4)
        conn = redis.Redis.from_url(own.url, decode_responses=True)
        wait_until(lambda: subscribed(conn, video_ids), 15, "the API to subscribe")

        own.stop()
        own = LocalRedis(tmp_path / "redis", port=own.port, persistent=False).start()
        conn = redis.Redis.from_url(own.url, decode_responses=True)
        wait_until(lambda: subscribed(conn, video_ids), 30, "the API to subscribe again after the restart")

        for video_id in video_ids:
            events.publish(conn, video_id, "progress", status="processing", progress=MARKER)
        wait_until(lambda: all(s.saw_progress(MARKER) for s in streams), 30, "every stream to get the message")
        for video_id in video_ids:
            farm.catalog.update(video_id, status="ready", progress=100.0)
            events.publish(conn, video_id, "status", status="ready", progress=100.0)
        wait_until(lambda: all(s.ended() for s in streams), 30, "every stream to end")
        assert {s.final_status() for s in streams} == {"ready"}
    finally:
        server.stop()
        own.stop()

"""First chunks first and fair to every tenant, with the real farm: API, Redis, `vidfarm worker`
processes and ffmpeg. Small low-rate clips in 6 s chunks (one segment each)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from rq.job import Job

from tests.conftest import OTHER_KEY, ApiServer, upload, wait_for, wait_until
from tests.test_faults import make
from vidfarm import presence
from vidfarm.farm import Farm
from vidfarm.states import TaskKind, TaskStatus, WorkerState

FIRST = "chunk-00000"


@pytest.fixture
def settings(settings):
    return replace(settings, chunk_seconds=6.0, ladder=("240p",))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dispatch")
    return {
        # 60 s: a first chunk of one segment, then nine more of one segment each.
        "long": make(folder / "long.mp4", "testsrc2=size=320x180:rate=10:duration=60"),
        "short": make(folder / "short.mp4", "testsrc2=size=320x180:rate=10:duration=6"),
        "tiny": make(folder / "tiny.mp4", "testsrc2=size=160x90:rate=10:duration=2"),
    }


def started_at(farm: Farm, job_id: str) -> float:
    started = Job.fetch(job_id, connection=farm.rq_redis).started_at
    assert started is not None, job_id
    return started.timestamp()


def task_status(farm: Farm, video_id: str, name: str) -> TaskStatus:
    return next(t.status for t in farm.catalog.tasks(video_id) if t.name == name)


def playable(farm: Farm, video_id: str) -> bool:
    return farm.catalog.get(video_id, cached=False)["playable_at"] is not None


def test_a_later_videos_first_chunk_runs_before_the_rest_of_a_long_one(http, farm, clips, start_worker):
    start_worker()
    long_id = upload(http, clips["long"]).json()["id"]
    wait_until(lambda: task_status(farm, long_id, "chunk-00002") == TaskStatus.RUNNING, 120,
               "the long video's third chunk to run")
    short_id = upload(http, clips["short"]).json()["id"]
    waiting = [t for t in farm.catalog.tasks(long_id) if t.kind == TaskKind.CHUNK and t.status == TaskStatus.QUEUED]
    assert len(waiting) >= 5  # the one worker had most of the long video still to do
    assert wait_for(http, long_id, timeout_s=300)["status"] == "ready"
    assert wait_for(http, short_id)["status"] == "ready"
    short_first = farm.catalog.task(short_id, FIRST)
    later = [farm.catalog.task(long_id, t.name) for t in waiting]
    # The short video's first chunk was the next job the worker took: before every chunk of the long one
    # that was waiting when it arrived.
    assert started_at(farm, short_first.job_id) < min(started_at(farm, t.job_id) for t in later)


def wait_busy(farm: Farm, count: int) -> None:
    wait_until(lambda: sum(w.state == WorkerState.BUSY for w in presence.all_workers(farm.redis)) >= count, 60,
               f"{count} workers busy")


def time_to(farm: Farm, http: httpx.Client, video_id: str, since: float) -> tuple[float, float]:
    """Seconds from `since` until the video was playable, and until it was ready."""
    played = wait_until(lambda: playable(farm, video_id) and time.monotonic(), 300, "playable", every_s=0.05)
    assert wait_for(http, video_id, timeout_s=300)["status"] == "ready"
    return played - since, time.monotonic() - since


def test_a_burst_of_one_tenant_does_not_hold_up_another_tenants_upload(http, api: ApiServer, farm, clips,
                                                                       start_worker):
    other = api.client(OTHER_KEY)
    workers = [start_worker(), start_worker()]
    # On an idle farm.
    since = time.monotonic()
    idle_id = upload(other, clips["short"]).json()["id"]
    idle_playable_s, _ = time_to(farm, other, idle_id, since)
    # Tenant A queues 20 videos while no worker runs; then the farm works through them, and B uploads.
    for worker in workers:
        worker.stop()
    with ThreadPoolExecutor(4) as pool:
        burst = list(pool.map(lambda _: upload(http, clips["tiny"]).json()["id"], range(20)))
    start_worker(), start_worker()
    wait_busy(farm, 2)
    since = time.monotonic()
    b_id = upload(other, clips["short"]).json()["id"]
    b_playable_s, b_ready_s = time_to(farm, other, b_id, since)
    assert wait_for(http, burst[2], timeout_s=300)["status"] == "ready"
    print(f"B playable {b_playable_s:.1f} s (idle farm {idle_playable_s:.1f} s), ready {b_ready_s:.1f} s")
    assert b_playable_s <= 2 * idle_playable_s
    # A's third video was queued long before B's: B is playable, and even ready, before it is ready
    # (a ready row changes no more).
    rows = {vid: farm.catalog.get(vid, cached=False) for vid in (b_id, burst[2])}
    assert rows[b_id]["playable_at"] < rows[b_id]["updated_at"] < rows[burst[2]]["updated_at"], rows


def test_the_farm_view_counts_every_tenants_queues_under_their_pool(http, api: ApiServer, farm, clips):
    # No worker: the jobs wait. Two tenants, two videos each with a first chunk and a later one.
    for client in (http, api.client(OTHER_KEY)):
        upload(client, clips["short"])
        upload(client, clips["long"])
    view = http.get("/v1/farm").json()
    assert set(view["queues"]) == set(farm.settings.served_queues)  # no tenant's queue shows, by name or count
    waiting = sum(t.kind != TaskKind.FINALIZE for v in farm.catalog.active() for t in farm.catalog.tasks(v["id"]))
    assert view["queues"]["cpu"] == {"queued": waiting, "running": 0, "failed": 0}

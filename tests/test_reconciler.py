"""The reconciler against real Redis and catalog, one rule per test: what it re-queues, what it fails,
what it leaves alone. Its clock is injected, so "a heartbeat TTL later" takes no time."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from rq import Queue

from tests.conftest import FakeClock
from vidfarm import presence
from vidfarm.catalog import VideoRow, utcnow
from vidfarm.farm import Farm
from vidfarm.jobs import enqueue
from vidfarm.reconciler import QUEUED_GRACE_S, Reconciler
from vidfarm.states import VideoStatus, WorkerState
from vidfarm.storage import new_video_id

WORKER = "worker-a"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reconciler(farm: Farm, clock: FakeClock) -> Reconciler:
    return Reconciler(farm, clock=clock)


def add_video(farm: Farm, status: VideoStatus, *, attempts: int = 0, age_s: float = 0.0) -> VideoRow:
    video_id = new_video_id()
    farm.catalog.create(
        id=video_id, tenant="t", status=status, attempts=attempts, filename="a.mp4", size_bytes=10,
        duration_s=2.0, width=320, height=240, fps=25.0, video_codec="h264", audio_codec=None, queue="cpu",
        job_id=f"{video_id}-first", worker=WORKER if status == VideoStatus.PROCESSING else None,
        requested=None, updated_at=utcnow() - timedelta(seconds=age_s),
    )
    return farm.catalog.get(video_id, cached=False)


def current(farm: Farm, video: VideoRow) -> VideoRow:
    return farm.catalog.get(video["id"], cached=False)


def queued_job_ids(farm: Farm) -> list[str]:
    return Queue("cpu", connection=farm.rq_redis).job_ids


def worker_reports(farm: Farm, video: VideoRow, name: str = WORKER) -> None:
    info = presence.WorkerInfo(name=name, pid=1, host="h", queues="cpu", encoder="x264",
                               state=WorkerState.BUSY, video_id=video["id"])
    presence.beat(farm.redis, info, farm.settings.worker_heartbeat_ttl_s)


# -- queued -----------------------------------------------------------------------------------------


def test_a_queued_video_whose_job_is_missing_is_queued_again(farm, reconciler):
    video = add_video(farm, VideoStatus.QUEUED, age_s=QUEUED_GRACE_S + 5)
    assert reconciler.step() == 1
    after = current(farm, video)
    assert after["status"] == VideoStatus.QUEUED and after["job_id"] != video["job_id"]
    assert queued_job_ids(farm) == [after["job_id"]]


def test_a_video_just_accepted_gets_a_grace_period_for_its_enqueue(farm, reconciler):
    video = add_video(farm, VideoStatus.QUEUED, age_s=1)
    assert reconciler.step() == 0
    assert current(farm, video)["job_id"] == video["job_id"] and queued_job_ids(farm) == []


def test_a_queued_video_whose_job_waits_in_redis_is_left_alone(farm, reconciler):
    video = add_video(farm, VideoStatus.QUEUED, age_s=QUEUED_GRACE_S + 5)
    enqueue(farm.rq_redis, farm.settings, video, video["job_id"])
    assert reconciler.step() == 0
    assert queued_job_ids(farm) == [video["job_id"]]


# -- processing -------------------------------------------------------------------------------------


def test_a_worker_silent_for_less_than_its_ttl_is_left_alone_then_its_video_runs_again(farm, reconciler, clock):
    video = add_video(farm, VideoStatus.PROCESSING, attempts=1)
    ttl = farm.settings.worker_heartbeat_ttl_s
    assert reconciler.step() == 0  # first seen without a worker: the clock starts
    clock.now += ttl - 0.5
    assert reconciler.step() == 0
    assert current(farm, video)["status"] == VideoStatus.PROCESSING
    clock.now += 0.5
    assert reconciler.step() == 1
    after = current(farm, video)
    assert (after["status"], after["worker"], after["attempts"]) == (VideoStatus.QUEUED, None, 1)
    assert queued_job_ids(farm) == [after["job_id"]]


def test_a_live_worker_on_the_video_keeps_it_however_long_it_takes(farm, reconciler, clock):
    video = add_video(farm, VideoStatus.PROCESSING, attempts=1)
    for _ in range(3):
        worker_reports(farm, video)
        assert reconciler.step() == 0
        clock.now += 10 * farm.settings.worker_heartbeat_ttl_s
    assert current(farm, video)["status"] == VideoStatus.PROCESSING


def test_another_worker_on_the_same_video_does_not_count_as_its_own(farm, reconciler, clock):
    video = add_video(farm, VideoStatus.PROCESSING, attempts=1)
    worker_reports(farm, video, name="worker-b")  # a stale duplicate of an older attempt
    assert reconciler.step() == 0
    clock.now += farm.settings.worker_heartbeat_ttl_s
    assert reconciler.step() == 1


def test_a_video_at_its_last_attempt_fails_worker_lost(farm, reconciler, clock):
    video = add_video(farm, VideoStatus.PROCESSING, attempts=farm.settings.max_attempts)
    reconciler.step()
    clock.now += farm.settings.worker_heartbeat_ttl_s
    assert reconciler.step() == 1
    after = current(farm, video)
    assert (after["status"], after["error_code"]) == (VideoStatus.FAILED, "worker_lost")
    assert f"each of {farm.settings.max_attempts} attempts" in after["error_message"]
    assert queued_job_ids(farm) == []


# -- partial uploads --------------------------------------------------------------------------------


def test_partial_uploads_of_a_dead_api_are_swept_and_live_ones_kept(farm, reconciler):
    incoming = farm.storage.incoming
    dead = incoming / ("a" * 32 + ".part")
    live = incoming / ("b" * 32 + ".part")
    dead.write_bytes(b"x" * 10)
    live.write_bytes(b"x" * 10)
    long_ago = time.time() - (2 * farm.settings.upload_idle_timeout_s + 120)
    os.utime(dead, (long_ago, long_ago))
    reconciler.step()
    assert not dead.exists()
    assert live.exists()

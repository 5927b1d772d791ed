"""The reconciler against real Redis and catalog, one rule per test: which task it re-queues, which
video it fails, what it leaves alone. Its clock is injected, so "a heartbeat TTL later" takes no time."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import replace
from datetime import timedelta

import pytest
import redis
from rq.job import Job
from sqlalchemy import event

from tests.conftest import BACKENDS, FakeClock
from tests.queued import queue_of, queued_ids, take
from vidfarm import lifecycle, presence
from vidfarm.catalog import VideoRow, utcnow
from vidfarm.farm import Farm
from vidfarm.jobs import enqueue_graph, plan_tasks
from vidfarm.queues import FIRST, REST, Dispatcher, task_queue, tenant_queues, tenants_key
from vidfarm.reconciler import QUEUED_GRACE_S, Reconciler
from vidfarm.states import TaskKind, TaskStatus, VideoStatus, WorkerState
from vidfarm.storage import new_video_id

WORKER = "worker-a"
CHUNK = "chunk-00000"  # a 2 s video is one chunk, then finalize


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reconciler(farm: Farm, clock: FakeClock) -> Reconciler:
    return Reconciler(farm, clock=clock)


def add_video(farm: Farm, *, age_s: float = 0.0, enqueued: bool = True, running_attempt: int = 0,
              duration_s: float = 2.0) -> VideoRow:
    """A video (2 s: one chunk) and its tasks, last touched `age_s` ago; with `running_attempt`, WORKER
    claimed its chunk for that attempt."""
    video_id = new_video_id()
    tasks = plan_tasks(video_id, duration_s, 25.0, False, farm.settings.chunk_seconds)
    status = VideoStatus.PROCESSING if running_attempt else VideoStatus.QUEUED
    video = farm.catalog.create(
        id=video_id, tenant="t", status=status, attempts=0, filename="a.mp4", size_bytes=10, duration_s=duration_s,
        width=320, height=240, fps=25.0, video_codec="h264", audio_codec=None, queue="cpu",
        job_id=None, requested=None, tasks=tasks,
    )
    for task in tasks:
        farm.catalog.update_task(video_id, task.name, updated_at=utcnow() - timedelta(seconds=age_s))
    if enqueued:
        enqueue_graph(farm.rq_redis, farm.settings, video, tasks)
    if running_attempt:
        farm.catalog.update_task(video_id, CHUNK, status=TaskStatus.RUNNING, worker=WORKER, attempts=running_attempt)
    return video


def chunk(farm: Farm, video: VideoRow) -> dict:
    return farm.catalog.task(video["id"], CHUNK)


def queued_job_ids(farm: Farm) -> list[str]:
    return queued_ids(farm)


def worker_reports(farm: Farm, video: VideoRow, name: str = WORKER, job_id: str | None = None) -> None:
    info = presence.WorkerInfo(name=name, pid=1, host="h", queues="cpu", encoder="x264", state=WorkerState.BUSY,
                               video_id=video["id"], job_id=job_id or chunk(farm, video).job_id)
    presence.beat(farm.redis, info, farm.settings.worker_heartbeat_ttl_s)


# -- queued -----------------------------------------------------------------------------------------


def test_a_queued_task_whose_job_is_missing_is_queued_again(farm, reconciler):
    video = add_video(farm, age_s=QUEUED_GRACE_S + 5, enqueued=False)
    before = chunk(farm, video)
    assert reconciler.step() == 1
    after = chunk(farm, video)
    assert after.status == TaskStatus.QUEUED and after.job_id != before.job_id
    assert queued_job_ids(farm) == [after.job_id]


def test_a_video_just_accepted_gets_a_grace_period_for_its_enqueue(farm, reconciler):
    video = add_video(farm, age_s=1, enqueued=False)
    before = chunk(farm, video)
    assert reconciler.step() == 0
    assert chunk(farm, video).job_id == before.job_id and queued_job_ids(farm) == []


def test_a_queued_task_whose_job_waits_in_redis_is_left_alone(farm, reconciler):
    video = add_video(farm, age_s=QUEUED_GRACE_S + 5)
    waiting = queued_job_ids(farm)
    assert reconciler.step() == 0
    assert queued_job_ids(farm) == waiting == [chunk(farm, video).job_id]


def test_a_job_waiting_in_its_tenants_queue_is_alive_and_left_where_a_worker_takes_it(farm, reconciler, clock):
    video = add_video(farm, age_s=QUEUED_GRACE_S + 5)
    job_id = chunk(farm, video).job_id
    assert queue_of(farm, job_id).name == task_queue("cpu", "t", first=True)
    # The pool's set of tenants with work lost (a Redis restored from an older snapshot): no worker
    # would look at t's queues. The job still counts as alive, and t is announced again.
    farm.rq_redis.delete(tenants_key("cpu", FIRST), tenants_key("cpu", REST))
    for _ in range(3):
        assert reconciler.step() == 0
        clock.now += 2 * farm.settings.lost_job_grace_s
    assert chunk(farm, video).job_id == job_id and chunk(farm, video).attempts == 0
    assert Dispatcher(farm.rq_redis, ["cpu"]).pop() == (task_queue("cpu", "t", first=True), job_id)


def popped(farm: Farm, job_id: str) -> None:
    """What a worker that froze or died right after its pop leaves: the job in no queue's list, its
    hash still `queued`."""
    take(farm, job_id)


def test_a_queued_job_in_no_list_and_on_no_worker_runs_again_after_the_grace(farm, reconciler, clock):
    video = add_video(farm, age_s=QUEUED_GRACE_S + 5)
    before = chunk(farm, video)
    popped(farm, before.job_id)
    grace = farm.settings.lost_job_grace_s
    assert reconciler.step() == 0  # first seen without a sign of life: the clock starts
    clock.now += grace - 0.5
    assert reconciler.step() == 0
    assert chunk(farm, video).job_id == before.job_id
    clock.now += 0.5
    assert reconciler.step() == 1
    after = chunk(farm, video)
    assert (after.status, after.attempts) == (TaskStatus.QUEUED, 0) and after.job_id != before.job_id
    assert queued_job_ids(farm) == [after.job_id]


def test_a_queued_job_a_live_worker_started_is_left_alone(farm, reconciler, clock):
    video = add_video(farm, age_s=QUEUED_GRACE_S + 5)
    before = chunk(farm, video)
    popped(farm, before.job_id)  # popped, not claimed yet: the catalog still says queued
    for _ in range(3):
        worker_reports(farm, video)
        assert reconciler.step() == 0
        clock.now += farm.settings.lost_job_grace_s
    assert chunk(farm, video).job_id == before.job_id


def test_a_sign_of_life_restarts_the_grace(farm, reconciler, clock):
    video = add_video(farm, age_s=QUEUED_GRACE_S + 5)
    job_id = chunk(farm, video).job_id
    popped(farm, job_id)
    grace = farm.settings.lost_job_grace_s
    assert reconciler.step() == 0
    clock.now += grace - 1
    worker_reports(farm, video)  # a slow worker reports it after all, then goes silent
    assert reconciler.step() == 0
    presence.remove(farm.redis, WORKER)
    clock.now += 1
    assert reconciler.step() == 0  # silent for 0 s, not for the grace
    clock.now += grace
    assert reconciler.step() == 1


def test_finalize_waiting_on_unfinished_tasks_is_left_alone_and_popped_finalize_runs_again(farm, reconciler, clock):
    video = add_video(farm, age_s=QUEUED_GRACE_S + 5)
    grace = farm.settings.lost_job_grace_s
    for _ in range(2):  # deferred on its chunk, queued: alive however long the chunk takes
        assert reconciler.step() == 0
        clock.now += 2 * grace
    finalize = farm.catalog.task(video["id"], TaskKind.FINALIZE)
    # The chunk is done and RQ released finalize into the queue, where a worker popped it and froze.
    farm.catalog.update_task(video["id"], CHUNK, status=TaskStatus.DONE, updated_at=utcnow() - timedelta(seconds=60))
    popped(farm, chunk(farm, video).job_id)  # it ran
    job = Job.fetch(finalize.job_id, connection=farm.rq_redis)
    farm.rq_redis.hset(job.key, "status", "queued")
    assert reconciler.step() == 0
    clock.now += grace
    assert reconciler.step() == 1
    after = farm.catalog.task(video["id"], TaskKind.FINALIZE)
    assert after.status == TaskStatus.QUEUED and after.job_id != finalize.job_id
    assert queued_job_ids(farm) == [after.job_id]


def test_a_pass_reads_each_queue_once_however_many_tasks_are_queued(farm, reconciler, redis_server):
    for _ in range(20):
        add_video(farm, age_s=QUEUED_GRACE_S + 5)
    monitor = redis.Redis.from_url(redis_server.url)
    before = command_calls(monitor)
    reconciler.step()
    after = command_calls(monitor)
    # Tenant t's queues in the pool: the plain one (jobs queued before an upgrade), first chunks, the rest.
    assert after.get("lrange", 0) - before.get("lrange", 0) == len(tenant_queues("cpu", "t")) == 3
    assert after.get("lpos", 0) == before.get("lpos", 0)


def command_calls(conn: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in conn.info("commandstats").items()}


# -- a locked catalog -------------------------------------------------------------------------------


def test_a_pass_that_meets_a_locked_catalog_survives_and_the_next_one_repairs(settings, clock):
    settings = replace(settings, db_lock_timeout_s=0.5)
    settings.home.mkdir(parents=True, exist_ok=True)
    farm = Farm(settings)
    reconciler = Reconciler(farm, clock=clock)
    video = add_video(farm, age_s=QUEUED_GRACE_S + 5, enqueued=False)
    # Another process holds SQLite's write lock (a worker frozen inside its progress transaction).
    holder = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        assert reconciler.step() == 0
        assert time.monotonic() - started < 10
        assert chunk(farm, video).status == TaskStatus.QUEUED and queued_job_ids(farm) == []
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert reconciler.step() == 1
    assert queued_job_ids(farm) == [chunk(farm, video).job_id]


# -- running ----------------------------------------------------------------------------------------


def test_a_worker_silent_for_less_than_its_ttl_is_left_alone_then_its_task_runs_again(farm, reconciler, clock):
    video = add_video(farm, running_attempt=1)
    ttl = farm.settings.worker_heartbeat_ttl_s
    assert reconciler.step() == 0  # first seen without a worker: the clock starts
    clock.now += ttl - 0.5
    assert reconciler.step() == 0
    assert chunk(farm, video).status == TaskStatus.RUNNING
    clock.now += 0.5
    assert reconciler.step() == 1
    after = chunk(farm, video)
    assert (after.status, after.worker, after.attempts) == (TaskStatus.QUEUED, None, 1)
    assert queued_job_ids(farm) == [after.job_id]


def test_a_live_worker_on_the_task_keeps_it_however_long_it_takes(farm, reconciler, clock):
    video = add_video(farm, running_attempt=1)
    for _ in range(3):
        worker_reports(farm, video)
        assert reconciler.step() == 0
        clock.now += 10 * farm.settings.worker_heartbeat_ttl_s
    assert chunk(farm, video).status == TaskStatus.RUNNING


def test_another_worker_on_the_same_job_does_not_count_as_its_own(farm, reconciler, clock):
    video = add_video(farm, running_attempt=1)
    worker_reports(farm, video, name="worker-b")  # not the worker the catalog says claimed it
    assert reconciler.step() == 0
    clock.now += farm.settings.worker_heartbeat_ttl_s
    assert reconciler.step() == 1


def test_a_task_at_its_last_attempt_fails_the_video_worker_lost(farm, reconciler, clock):
    video = add_video(farm, running_attempt=farm.settings.max_attempts)
    reconciler.step()
    clock.now += farm.settings.worker_heartbeat_ttl_s
    assert reconciler.step() == 1
    after = farm.catalog.get(video["id"], cached=False)
    assert (after["status"], after["error_code"]) == (VideoStatus.FAILED, "worker_lost")
    assert f"each of {farm.settings.max_attempts} attempts at {CHUNK}" in after["error_message"]
    assert queued_job_ids(farm) == []  # the video's other jobs are dropped


# -- uploads and stored media ------------------------------------------------------------------------


def receiving(farm: Farm, *, idle_s: float) -> str:
    """A POST's `receiving` row, last touched `idle_s` ago, with its partial upload as old."""
    from vidfarm.lifecycle import receive

    video_id = receive(farm, "t")
    farm.storage.begin_upload(video_id).write(b"x" * 10)
    farm.catalog.update(video_id, updated_at=utcnow() - timedelta(seconds=idle_s))
    then = time.time() - idle_s
    os.utime(farm.storage.incoming_path(video_id), (then, then))
    return video_id


def test_uploads_of_a_dead_api_are_swept_with_their_rows_and_live_ones_kept(farm, reconciler):
    long_ago = 2 * farm.settings.upload_idle_timeout_s + 120
    dead, live = receiving(farm, idle_s=long_ago), receiving(farm, idle_s=long_ago)
    presence.upload_beat(farm.redis, live, farm.settings.upload_idle_timeout_s)
    reconciler.step()
    assert not farm.storage.incoming_path(dead).exists() and farm.catalog.get(dead, cached=False) is None
    assert farm.storage.incoming_path(live).exists()
    assert farm.catalog.get(live, cached=False)["status"] == VideoStatus.RECEIVING


def store_upload(farm: Farm, video_id: str) -> None:
    """What a POST of an older vidfarm left in storage once its body was stored, before its row."""
    writer = farm.storage.begin_upload(video_id)
    writer.write(b"x" * 1000)
    writer.complete()
    farm.storage.promote_upload(video_id)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_stored_media_the_catalog_does_not_know_is_kept_however_old(farm, reconciler, clock):
    # Another farm's, a restored backup's, an older vidfarm's crash: only an operator may judge it.
    unrecorded = new_video_id()
    store_upload(farm, unrecorded)
    recorded = add_video(farm)
    store_upload(farm, recorded["id"])
    kept = {video_id: farm.storage.keys(video_id) for video_id in (unrecorded, recorded["id"])}
    for _ in range(3):
        reconciler.step()
        clock.now += 10 * 3600
    assert reconciler.sweep_receiving(time.time() + 10 * 3600) == 0
    assert {video_id: farm.storage.keys(video_id) for video_id in kept} == kept


def test_a_pass_costs_the_catalog_the_same_however_many_videos_are_active(farm, reconciler):
    def statements_in_one_pass() -> int:
        seen: list[str] = []

        def count(_conn, _cursor, statement, *_args) -> None:
            seen.append(statement)

        event.listen(farm.catalog.engine, "before_cursor_execute", count)
        try:
            reconciler.step()
        finally:
            event.remove(farm.catalog.engine, "before_cursor_execute", count)
        return len(seen)

    add_video(farm)
    reconciler.step()  # the first pass also looks for stored media without a video
    one_video = statements_in_one_pass()
    for _ in range(20):
        add_video(farm)
    assert statements_in_one_pass() == one_video


def test_a_task_requeued_as_its_video_fails_leaves_nothing_queued(farm, clock):
    # The race: a pass reads the video as active and takes its task's job for lost; meanwhile the video
    # fails and its stop drops the jobs the catalog named. The pass's new job must not stay queued.
    reconciler = Reconciler(farm, clock=clock)
    video = add_video(farm, age_s=QUEUED_GRACE_S + 5, enqueued=False)
    task = next(t for t in farm.catalog.tasks(video["id"]) if t.kind == TaskKind.CHUNK)
    assert lifecycle.fail(farm, video["id"], "media_error", "a chunk failed for good")
    assert reconciler._requeue(video, task, "its job is missing from Redis") == 0
    assert queued_ids(farm) == []

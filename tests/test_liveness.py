"""No job vanishes between Redis and a worker, and a frozen worker cannot stall the farm through the
catalog: real workers frozen with SIGSTOP (a long GC pause, a partitioned node) at the worst moments,
real Redis, real PostgreSQL row locks. The reconciler runs in a thread of the test, as in `vidfarm up`.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.conftest import PG_URL, ApiServer, WorkerProcess, pg_available, reconciling, upload, wait_for, wait_until
from tests.queued import queued_ids, take
from transcoder.worker import FREEZE_IN_PROGRESS_ENV
from vidfarm import presence
from vidfarm.farm import Farm
from vidfarm.states import TaskKind, TaskStatus, WorkerState

HEARTBEAT_TTL_S = 5


@pytest.fixture
def settings(settings):
    """A dead worker is noticed after one heartbeat TTL (5 s) instead of the default 10 s; the grace
    for a popped job and the database bounds are the defaults."""
    return replace(settings, worker_heartbeat_ttl_s=HEARTBEAT_TTL_S)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """4 s, one chunk and finalize (no audio): the first job queued is the chunk."""
    path = tmp_path_factory.mktemp("liveness") / "clip.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=640x360:rate=25:duration=4", "-c:v", "libx264", "-preset", "ultrafast",
                    str(path)], check=True)
    return path


def chunk_task(farm: Farm, video_id: str) -> dict:
    return next(t for t in farm.catalog.tasks(video_id) if t.kind == TaskKind.CHUNK)


def stored_files(farm: Farm, video_id: str) -> list[str]:
    folder = farm.settings.storage.path / "videos" / video_id
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def idle_worker(farm: Farm, name: str) -> bool:
    return any(w.name == name and w.state == WorkerState.IDLE for w in presence.all_workers(farm.redis))


def blocked_in_dequeue_just_now(farm: Farm, client_id: str | None = None) -> str | None:
    """The id of a connection (the only worker's, or `client_id`) that has just started its blocking
    pop: Redis hands it the next job whatever the worker does for several seconds (a slice is 10 s)."""
    for client in farm.rq_redis.client_list():
        if (client["cmd"] in ("blmove", "blpop") and "b" in client["flags"] and int(client["idle"]) == 0
                and client_id in (None, client["id"])):
            return client["id"]
    return None


def test_a_job_whose_consumer_died_after_the_pop_runs_again_and_the_video_ends_ready(clip, http, farm,
                                                                                      start_worker, reconciler):
    video_id = upload(http, clip).json()["id"]
    job_id = wait_until(lambda: (j := chunk_task(farm, video_id).job_id) in queued_ids(farm) and j, 30,
                        "the chunk's job to be queued")
    # What a consumer that died right after its BLPOP leaves: the job in no list, RQ and the catalog `queued`.
    take(farm, job_id)
    removed_at = time.monotonic()
    start_worker()
    wait_until(lambda: chunk_task(farm, video_id).job_id != job_id, 60, "the chunk to be queued again")
    # The task's age counts too (a task just queued gets QUEUED_GRACE_S for its enqueue), then the grace.
    assert time.monotonic() - removed_at < farm.settings.lost_job_grace_s + 10
    ready = wait_for(http, video_id, timeout_s=90)
    assert ready["status"] == "ready", ready["error"]
    assert chunk_task(farm, video_id).attempts == 1  # the lost job never ran: the new one did, once
    assert reconciler == []


def test_an_idle_worker_frozen_in_its_dequeue_does_not_hold_the_next_job(clip, http, farm, start_worker, reconciler):
    frozen = start_worker()
    wait_until(lambda: idle_worker(farm, frozen.name), 60, "the worker to be idle")
    connection = wait_until(lambda: blocked_in_dequeue_just_now(farm), 30, "the worker to block in its dequeue",
                            every_s=0.05)
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        video_id = upload(http, clip).json()["id"]
        waiting = chunk_task(farm, video_id).job_id
        # A blocked pop takes only a wake-up: jobs wait in queues that the dispatch script pops
        # (`vidfarm.queues`). The frozen worker holds nothing; the job waits for the next worker.
        time.sleep(1)
        assert waiting in queued_ids(farm)
        other = start_worker()
        ready = wait_for(http, video_id, timeout_s=90)
        assert ready["status"] == "ready", ready["error"]
        assert time.monotonic() - frozen_at < 60
        done = chunk_task(farm, video_id)
        assert (done.worker, done.job_id, done.attempts) == (other.name, waiting, 1)  # run at once, never re-queued
        published = stored_files(farm, video_id)
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)

    # Thawed, the worker finds no job behind its wake-up and blocks in its next dequeue.
    wait_until(lambda: blocked_in_dequeue_just_now(farm, connection), 30, "the thawed worker to dequeue again",
               every_s=0.05)
    after = http.get(f"/v1/videos/{video_id}").json()
    assert (after["status"], after["attempts"]) == ("ready", 1)
    assert stored_files(farm, video_id) == published  # no second output, nothing removed
    assert frozen.proc.poll() is None
    # ...and it takes work again.
    assert wait_for(http, upload(http, clip).json()["id"], timeout_s=90)["status"] == "ready"
    assert reconciler == []


# -- a worker frozen inside a catalog transaction ---------------------------------------------------


def test_a_write_meeting_a_sqlite_lock_held_by_a_frozen_process_answers_503_without_hanging(clip, http, farm):
    video_id = upload(http, clip).json()["id"]
    # Another process holds SQLite's write lock and does not let go (frozen inside its transaction).
    holder = sqlite3.connect(farm.settings.database_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        answer = http.delete(f"/v1/videos/{video_id}")
        waited = time.monotonic() - started
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "database_unavailable"
        assert waited < 15  # the default lock wait is 5 s; before, the busy timeout held it 30 s
        assert http.get(f"/v1/videos/{video_id}").status_code == 200  # reads go on meanwhile
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert http.delete(f"/v1/videos/{video_id}").status_code == 204


def pg_admin_url() -> str:
    return PG_URL.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"


@pytest.fixture
def pg_settings(settings) -> Iterator:
    if not pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = f"vidfarm_live_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield replace(settings, database_url=PG_URL.rsplit("/", 1)[0] + f"/{name}")
    with psycopg.connect(pg_admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def idle_in_transaction(settings) -> int:
    url = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND state = 'idle in transaction'").fetchone()[0]


def timed_get(http: httpx.Client, path: str) -> float:
    started = time.monotonic()
    answer = http.get(path, timeout=30)
    assert answer.status_code == 200, answer.text
    return time.monotonic() - started


@pytest.mark.slow
def test_a_worker_frozen_inside_its_progress_transaction_cannot_stall_the_farm(clip, pg_settings, monkeypatch):
    settings = pg_settings
    settings.home.mkdir(parents=True, exist_ok=True)
    farm = Farm(settings)
    api = ApiServer(farm).start()
    monkeypatch.setenv(FREEZE_IN_PROGRESS_ENV, "1")
    frozen = WorkerProcess(settings)
    monkeypatch.delenv(FREEZE_IN_PROGRESS_ENV)
    workers = [frozen]
    try:
        with api.client() as http, reconciling(farm) as errors:
            video_id = upload(http, clip).json()["id"]
            wait_until(lambda: stopped(frozen.proc.pid), 60, "the worker to freeze inside its progress write")
            frozen_at = time.monotonic()
            lost = chunk_task(farm, video_id)
            assert lost.status == TaskStatus.RUNNING and idle_in_transaction(settings) == 1  # its row locks held
            workers.append(WorkerProcess(settings))

            slowest = 0.0

            def requeued() -> bool:
                nonlocal slowest
                slowest = max(slowest, timed_get(http, f"/v1/videos/{video_id}"), timed_get(http, "/v1/videos"))
                return chunk_task(farm, video_id).job_id != lost.job_id

            wait_until(requeued, 30, "the frozen worker's chunk to be queued again", every_s=0.5)
            assert time.monotonic() - frozen_at < 30
            assert slowest < 5, f"the API took {slowest:.1f} s to answer"
            ready = wait_for(http, video_id, timeout_s=90)
            assert ready["status"] == "ready", ready["error"]
            published = stored_files(farm, video_id)

            os.kill(frozen.proc.pid, signal.SIGCONT)
            # Thawed: its session is gone and its attempt is superseded; it changes nothing.
            wait_until(lambda: idle_worker(farm, frozen.name), 60, "the thawed worker to be idle again")
            after = http.get(f"/v1/videos/{video_id}").json()
            assert (after["status"], after["progress"]) == ("ready", 100.0)
            assert stored_files(farm, video_id) == published
            assert errors == []
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                os.kill(worker.proc.pid, signal.SIGCONT)
            worker.stop(timeout_s=20)
        api.stop()
        farm.catalog.engine.dispose()
        redis.Redis.from_url(settings.redis_url).flushall()

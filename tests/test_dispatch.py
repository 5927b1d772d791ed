"""Which job a worker takes next: first chunks before anything else, round-robin across the tenants
with work, jobs queued under the old (plain pool) names last. Real Redis and RQ queues; the tests with
real workers and uploads are in tests/test_dispatch_farm.py."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

from rq import Queue
from rq.job import Job, JobStatus

from tests.conftest import wait_until
from tests.test_worker_startup import farm_worker
from vidfarm.farm import Farm
from vidfarm.queues import (
    FIRST,
    LEVELS,
    REST,
    Dispatcher,
    announce,
    forget_idle_queues,
    pool_counts,
    pool_of,
    pool_queues,
    task_queue,
    tenant_tag,
    tenants_key,
)
from vidfarm.redisconn import connect


def queue_job(farm: Farm, tenant: str, first: bool, name: str, *, depends_on: str | None = None) -> str:
    """A job of `tenant` queued as `vidfarm.jobs.enqueue_task` queues one, announced as it announces."""
    queue = Queue(task_queue("cpu", tenant, first), connection=farm.rq_redis)
    queue.enqueue("os.getpid", job_id=name, depends_on=depends_on)
    announce(farm.rq_redis, "cpu", [tenant])
    return name


def taken(dispatcher: Dispatcher, count: int) -> list[str]:
    jobs = []
    for _ in range(count):
        popped = dispatcher.pop()
        assert popped is not None, f"nothing to take after {jobs}"
        jobs.append(popped[1])
    return jobs


def test_first_chunks_go_first_and_tenants_take_turns(farm: Farm) -> None:
    for n in range(3):
        queue_job(farm, "burst", False, f"burst-later-{n}")
    for n in range(3):
        queue_job(farm, "burst", True, f"burst-first-{n}")
    queue_job(farm, "single", False, "single-later")
    queue_job(farm, "single", True, "single-first")
    dispatcher = Dispatcher(farm.rq_redis, ["cpu"])
    order = taken(dispatcher, 8)
    # Every first chunk before any later one; within a level the tenants alternate while both have work.
    assert set(order[:4]) == {"burst-first-0", "burst-first-1", "burst-first-2", "single-first"}
    assert order.index("single-first") <= 1
    assert order.index("single-later") <= 5
    assert [j for j in order if j.startswith("burst")] == [
        "burst-first-0", "burst-first-1", "burst-first-2", "burst-later-0", "burst-later-1", "burst-later-2"]
    assert dispatcher.pop() is None


def test_a_burst_of_one_tenant_lets_every_other_tenant_in_within_a_round(farm: Farm) -> None:
    for n in range(20):
        queue_job(farm, "a", True, f"a-{n}")
    dispatcher = Dispatcher(farm.rq_redis, ["cpu"])
    assert taken(dispatcher, 2) == ["a-0", "a-1"]
    queue_job(farm, "b", True, "b-0")
    assert "b-0" in taken(dispatcher, 2)


def test_jobs_queued_under_the_plain_pool_name_still_run_after_the_others(farm: Farm) -> None:
    # What an upgrade leaves in Redis: jobs queued in `cpu` itself before queues were derived.
    Queue("cpu", connection=farm.rq_redis).enqueue("os.getpid", job_id="old")
    queue_job(farm, "t", False, "new")
    dispatcher = Dispatcher(farm.rq_redis, ["cpu"])
    assert taken(dispatcher, 2) == ["new", "old"]
    assert tenants_with_work(farm) == {FIRST: set(), REST: set()}  # nothing left: t is dropped


def tenants_with_work(farm: Farm) -> dict[str, set[str]]:
    return {level: {t.decode() for t in farm.rq_redis.zrange(tenants_key("cpu", level), 0, -1)} for level in LEVELS}


def test_a_finalize_released_by_a_workers_job_is_taken_next(farm: Farm) -> None:
    # Finalize waits (deferred) on the chunk; when the chunk ends RQ queues it into the tenant's queue
    # without telling the dispatch, after the tenant was dropped for an empty queue. The worker that ran
    # the chunk announces the tenant again: a burst worker runs both jobs, then stops.
    queue_job(farm, "t", True, "chunk")
    queue_job(farm, "t", False, "finalize", depends_on="chunk")
    # What a walk does while finalize is deferred: t's later-chunks queue is empty, t leaves that level.
    farm.rq_redis.zrem(tenants_key("cpu", REST), tenant_tag("t"))
    worker = farm_worker(farm)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.work(burst=True, logging_level="WARNING", with_scheduler=False)
    finally:
        for sig, handler in handlers.items():  # work() installed RQ's in this (pytest's) process
            signal.signal(sig, handler)
    statuses = [Job.fetch(j, connection=farm.rq_redis).get_status() for j in ("chunk", "finalize")]
    assert statuses == [JobStatus.FINISHED, JobStatus.FINISHED]
    assert tenants_with_work(farm) == {FIRST: set(), REST: set()}


def test_queue_names_are_bounded_and_belong_to_their_pool(farm: Farm) -> None:
    name = task_queue("cpu", "tenant/with spaces:and" + "x" * 200, first=True)
    assert name == f"cpu.first.{tenant_tag('tenant/with spaces:andx' + 'x' * 199)}"
    assert len(name) == len("cpu.first.") + 16 and name.replace(".", "").isalnum()
    assert pool_of(name) == "cpu" and pool_of("cpu") == "cpu" and pool_of("gpu.rest.x") == "gpu.rest.x"


def test_pool_counts_add_up_every_queue_of_the_pool(farm: Farm) -> None:
    queue_job(farm, "a", True, "a-first")
    queue_job(farm, "b", False, "b-later")
    Queue("cpu", connection=farm.rq_redis).enqueue("os.getpid", job_id="old")
    Queue("gpu", connection=farm.rq_redis).enqueue("os.getpid", job_id="elsewhere")
    assert pool_counts(farm.rq_redis, "cpu") == {"queued": 3, "running": 0, "failed": 0, "first": 1}


def test_a_worker_of_several_pools_takes_every_pools_first_chunks_first(farm: Farm) -> None:
    Queue(task_queue("cpu", "t", False), connection=farm.rq_redis).enqueue("os.getpid", job_id="cpu-later")
    announce(farm.rq_redis, "cpu", ["t"])
    Queue(task_queue("gpu", "t", True), connection=farm.rq_redis).enqueue("os.getpid", job_id="gpu-first")
    announce(farm.rq_redis, "gpu", ["t"])
    assert taken(Dispatcher(farm.rq_redis, ["cpu", "gpu"]), 2) == ["gpu-first", "cpu-later"]


def test_a_tenants_queues_are_forgotten_once_nothing_is_left_in_them(farm: Farm) -> None:
    done = queue_job(farm, "done", True, "done-job")
    failed = queue_job(farm, "failed", True, "failed-job")
    dispatcher = Dispatcher(farm.rq_redis, ["cpu"])
    taken(dispatcher, 2)
    failed_queue = Queue(task_queue("cpu", "failed", True), connection=farm.rq_redis)
    failed_queue.failed_job_registry.add(failed_queue.fetch_job(failed), ttl=3600)
    names = pool_queues(farm.rq_redis, "cpu", with_work_only=False)
    assert task_queue("cpu", "done", True) in names
    assert forget_idle_queues(farm.rq_redis, names) == 1
    # The failed job still counts (for a day: RQ's failure TTL), the one that ran leaves nothing.
    assert pool_queues(farm.rq_redis, "cpu", with_work_only=False) == ["cpu", failed_queue.name]
    assert pool_counts(farm.rq_redis, "cpu")["failed"] == 1
    assert Job.exists(done, connection=farm.rq_redis)  # jobs are untouched: only the queue is unlisted
    queue_job(farm, "done", True, "again")  # a new job brings its queue back
    assert task_queue("cpu", "done", True) in pool_queues(farm.rq_redis, "cpu", with_work_only=False)


def test_a_workers_upkeep_covers_every_queue_of_its_pool(farm: Farm) -> None:
    queue_job(farm, "t", True, "ran")
    Dispatcher(farm.rq_redis, ["cpu"]).pop()
    assert task_queue("cpu", "t", True) in pool_queues(farm.rq_redis, "cpu", with_work_only=False)
    farm_worker(farm).clean_registries()
    assert pool_queues(farm.rq_redis, "cpu", with_work_only=False) == ["cpu"]


def test_one_enqueue_wakes_as_many_idle_workers_as_it_has_jobs(farm: Farm) -> None:
    # Three idle workers wait; a video's graph rings the doorbell once. Each worker that wakes and finds
    # a job wakes the next, so both jobs start at once, and the third worker goes back to waiting.
    idle = [Dispatcher(connect(farm.settings.redis_url), ["cpu"]) for _ in range(3)]  # as workers connect
    with ThreadPoolExecutor(3) as pool:
        waiting = [pool.submit(lambda d: (d.take(8.0), time.monotonic()), d) for d in idle]
        wait_until(lambda: blocked_pops(farm) == 3, 5, "three workers blocked")
        started = time.monotonic()
        for n in range(2):
            Queue(task_queue("cpu", "t", n == 0), connection=farm.rq_redis).enqueue("os.getpid", job_id=f"j{n}")
        announce(farm.rq_redis, "cpu", ["t"])
        results = [w.result() for w in waiting]
    taken_at = {popped[1]: at - started for popped, at in results if popped is not None}
    assert sorted(taken_at) == ["j0", "j1"] and max(taken_at.values()) < 3.0, taken_at  # not a slice (8 s) later


def blocked_pops(farm: Farm) -> int:
    return sum(c["cmd"] == "blpop" and "b" in c["flags"] for c in farm.rq_redis.client_list())

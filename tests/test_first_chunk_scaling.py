"""Queued first chunks make the pool grow at once: the policy's rule, and the controller observing a
real farm (catalog, Redis, RQ queues as the API queues a video's graph) with an in-memory backend."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import REGISTRY

from autoscaler.controller import Controller
from autoscaler.observe import FarmObserver
from autoscaler.policy import PolicyState, PoolConfig, Snapshot, decide
from tests.test_controller import MemoryBackend
from tests.test_reconciler import add_video
from vidfarm import presence
from vidfarm.farm import Farm
from vidfarm.queues import Dispatcher
from vidfarm.states import TaskKind, WorkerState

# Scale-up held back on purpose: 4 jobs per worker, one replica added per decision.
SLOW = PoolConfig("cpu", ("cpu",), max_replicas=6, target_jobs_per_worker=4.0, max_scale_up_step=1)


def snapshot(busy: int, queued: int, first: int) -> Snapshot:
    return Snapshot(now=0.0, queued_jobs=queued, running_jobs=busy, idle_workers=0, busy_workers=busy,
                    current_replicas=busy, queued_first=first)


def test_each_queued_first_chunk_gets_a_worker_now_whatever_the_targets() -> None:
    held = decide(snapshot(busy=2, queued=3, first=0), SLOW, PolicyState())
    assert (held.desired, held.direction) == (2, "none")  # later chunks wait for the busy workers
    grown = decide(snapshot(busy=2, queued=3, first=3), SLOW, PolicyState())
    assert (grown.desired, grown.reason) == (5, "first_chunks")  # past the step limit too
    capped = decide(snapshot(busy=2, queued=9, first=9), SLOW, PolicyState())
    assert capped.desired == SLOW.max_replicas


def test_an_idle_worker_serves_a_queued_first_chunk_without_growth() -> None:
    idle = replace(snapshot(busy=1, queued=1, first=1), idle_workers=1, current_replicas=2)
    assert decide(idle, SLOW, PolicyState()).desired == 2


def busy_worker(farm: Farm, name: str) -> None:
    info = presence.WorkerInfo(name=name, pid=1, host="h", queues="cpu", encoder="x264", pool="cpu",
                               state=WorkerState.BUSY, video_id="v", job_id=f"{name}-job")
    presence.beat(farm.redis, info, farm.settings.worker_heartbeat_ttl_s)


def test_the_controller_grows_the_pool_at_once_for_a_queued_first_chunk(farm: Farm) -> None:
    busy_worker(farm, "w1")
    backend = MemoryBackend(replicas=1)
    control = Controller([(SLOW, backend)], FarmObserver(farm))
    video = add_video(farm, duration_s=60.0)  # a first chunk, later chunks, finalize: in the tenant's queues
    decision = control.step()["cpu"]
    assert (backend.replicas, decision.reason) == (2, "first_chunks")
    # Every queue of the pool counts in its metric, whichever tenant's or level's queue a job is in
    # (finalize waits, deferred, and is not queued yet).
    chunks = [t for t in farm.catalog.tasks(video["id"]) if t.kind == TaskKind.CHUNK]
    assert len(chunks) >= 2
    assert REGISTRY.get_sample_value("vidfarm_queue_jobs", {"queue": "cpu", "state": "queued"}) == len(chunks)
    # Once the first chunk is taken (by the new worker) the later chunks wait for the busy ones.
    assert Dispatcher(farm.rq_redis, ["cpu"]).pop() is not None
    busy_worker(farm, "w2")
    assert control.step()["cpu"].direction == "none" and backend.replicas == 2

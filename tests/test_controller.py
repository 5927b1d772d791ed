"""The control loop with an in-memory backend and observer (pure logic, no services)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import REGISTRY

from autoscaler.backend import WorkerRef, choose_victims
from autoscaler.controller import Controller
from autoscaler.policy import PoolConfig, Snapshot
from tests.conftest import FakeClock, wait_until


class MemoryBackend:
    """Keeps a replica count and records every scale_to call."""

    def __init__(self, replicas: int = 0, name: str = "memory") -> None:
        self.name = name
        self.replicas = replicas
        self.calls: list[tuple[int, list[WorkerRef]]] = []

    def current_replicas(self) -> int:
        return self.replicas

    def scale_to(self, desired: int, victims: Sequence[WorkerRef]) -> None:
        self.calls.append((desired, list(victims)))
        if desired < self.replicas:
            assert len(victims) == self.replicas - desired, "backend must remove exactly the victims"
        self.replicas = desired


class World:
    """What the observer reports: set fields directly in tests."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.queued = 0
        self.running = 0
        self.workers: list[WorkerRef] = []
        self.observed: list[str] = []

    def observe(self, config: PoolConfig) -> tuple[Snapshot, list[WorkerRef]]:
        self.observed.append(config.name)
        busy = sum(w.state == "busy" for w in self.workers)
        idle = sum(w.state == "idle" for w in self.workers)
        # current_replicas deliberately wrong: the controller must ask the backend.
        snapshot = Snapshot(self.clock(), self.queued, self.running, idle, busy, current_replicas=-99)
        return snapshot, list(self.workers)


def workers(*states: str) -> list[WorkerRef]:
    return [WorkerRef(name=f"w{i}", state=state) for i, state in enumerate(states)]


CPU = PoolConfig("cpu", ("cpu",), min_replicas=0, max_replicas=4, scale_down_after_s=60.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(clock: FakeClock) -> World:
    return World(clock)


def controller(world: World, *pools: tuple[PoolConfig, MemoryBackend], **kwargs: object) -> Controller:
    return Controller(list(pools), world.observe, clock=world.clock, **kwargs)


def test_burst_scales_up_to_max_in_one_step(world: World) -> None:
    backend = MemoryBackend(0)
    world.queued = 10
    decisions = controller(world, (CPU, backend)).step()
    assert backend.calls == [(4, [])]
    assert (decisions["cpu"].direction, decisions["cpu"].reason) == ("up", "at_max")


def test_current_replicas_come_from_the_backend(world: World) -> None:
    backend = MemoryBackend(2)
    world.running = 2
    world.workers = workers("busy", "busy")
    decisions = controller(world, (CPU, backend)).step()
    assert decisions["cpu"].desired == 2
    assert backend.calls == []  # steady: no write


def test_scale_down_removes_only_idle_workers_after_the_delay(world: World, clock: FakeClock) -> None:
    backend = MemoryBackend(4)
    world.running = 2
    world.workers = workers("idle", "busy", "idle", "busy")
    ctl = controller(world, (CPU, backend))

    assert ctl.step()["cpu"].reason == "hold_scale_down_delay"
    clock.now += 59.0
    ctl.step()
    assert backend.calls == []
    clock.now += 1.0
    decision = ctl.step()["cpu"]

    assert decision.direction == "down"
    assert backend.calls == [(2, [WorkerRef("w0", "idle"), WorkerRef("w2", "idle")])]


def test_the_scale_down_delay_is_learned_from_the_starts_the_controller_measured(world: World,
                                                                                clock: FakeClock) -> None:
    backend = MemoryBackend(0)
    ctl = controller(world, (CPU, backend))
    world.queued = 2
    ctl.step()  # asks for two replicas
    clock.now += 25.0
    world.queued, world.running, world.workers = 0, 2, workers("busy", "busy")
    ctl.step()  # both registered: two starts of 25 s
    clock.now += 100.0
    world.running, world.workers = 0, workers("idle", "idle")
    assert ctl.step()["cpu"].reason == "hold_scale_down_delay"
    clock.now += 24.0
    ctl.step()
    assert backend.calls == [(2, [])]
    clock.now += 1.0
    decision = ctl.step()["cpu"]
    # Idle for as long as a start took (25 s), not the configured 60 s.
    assert (decision.direction, backend.calls[-1][0]) == ("down", 0)


def test_fewer_idle_than_wanted_shrinks_by_the_idle_count_and_retries(world: World, clock: FakeClock) -> None:
    backend = MemoryBackend(4)  # two pods not registered with RQ yet: neither idle nor busy
    world.workers = workers("idle", "busy")
    world.running = 1
    ctl = controller(world, (CPU, backend))
    ctl.step()
    clock.now += 60.0

    decision = ctl.step()["cpu"]
    assert backend.calls == [(3, [WorkerRef("w0", "idle")])]
    assert decision.desired == 3
    assert "only 1 of 3 workers idle" in decision.message

    # The other two register as idle: removed on the next pass, no new 60 s wait.
    world.workers = [WorkerRef("w1", "busy"), WorkerRef("w8", "idle"), WorkerRef("w9", "idle")]
    clock.now += 1.0
    ctl.step()
    assert backend.calls[-1] == (1, [WorkerRef("w8", "idle"), WorkerRef("w9", "idle")])


def test_no_idle_worker_means_no_scale_down(world: World, clock: FakeClock) -> None:
    backend = MemoryBackend(2)
    world.workers = workers("draining", "draining")  # already leaving: not victims again
    ctl = controller(world, (CPU, backend))
    ctl.step()
    clock.now += 61.0
    decision = ctl.step()["cpu"]
    assert backend.calls == []
    assert (decision.direction, decision.reason) == ("none", "no_idle_victims")


def test_choose_victims_never_picks_busy_or_draining() -> None:
    pool = [WorkerRef("c", "idle"), WorkerRef("a", "busy"), WorkerRef("b", "draining"), WorkerRef("a2", "idle")]
    assert choose_victims(pool, 5) == [WorkerRef("a2", "idle"), WorkerRef("c", "idle")]
    assert choose_victims(pool, 1) == [WorkerRef("a2", "idle")]
    assert choose_victims(pool, 0) == []


def test_one_failing_pool_does_not_stop_the_others(world: World, caplog: pytest.LogCaptureFixture) -> None:
    class BrokenBackend(MemoryBackend):
        def current_replicas(self) -> int:
            raise RuntimeError("API server on fire")

    gpu = PoolConfig("gpu", ("gpu",), max_replicas=2)
    healthy = MemoryBackend(0)
    world.queued = 1
    with caplog.at_level(logging.WARNING):
        decisions = controller(world, (CPU, BrokenBackend(0)), (gpu, healthy)).step()
    assert list(decisions) == ["gpu"]
    assert healthy.calls == [(1, [])]
    assert "pool cpu: autoscaler step failed" in caplog.text
    assert "API server on fire" in caplog.text


def test_follower_neither_observes_nor_scales(world: World) -> None:
    class Follower:
        is_leader = False

        def try_acquire_or_renew(self) -> bool:
            return False

    backend = MemoryBackend(0)
    world.queued = 3
    assert controller(world, (CPU, backend), leader=Follower()).step() == {}
    assert world.observed == []
    assert backend.calls == []


def test_status_is_json_and_complete(world: World) -> None:
    statuses: list[dict] = []
    world.queued = 2
    ctl = controller(world, (CPU, MemoryBackend(0)), on_status=statuses.append, wall_clock=lambda: 1.7e9)
    ctl.step()

    assert len(statuses) == 1
    assert json.loads(json.dumps(statuses[0])) == {
        "pools": {
            "cpu": {
                "min": 0,
                "max": 4,
                "desired": 2,
                "current": 0,
                "queues": ["cpu"],
                "last_decision": {
                    "desired": 2,
                    "direction": "up",
                    "reason": "queue_backlog",
                    "message": statuses[0]["pools"]["cpu"]["last_decision"]["message"],
                    "at": 1.7e9,
                },
            }
        }
    }
    assert "scale up 0 -> 2" in statuses[0]["pools"]["cpu"]["last_decision"]["message"]


def test_metrics_per_pool(world: World) -> None:
    config = PoolConfig("metrics-pool", ("q",), max_replicas=8)
    world.queued = 3
    before = REGISTRY.get_sample_value(
        "vidfarm_autoscaler_decisions_total", {"pool": "metrics-pool", "direction": "up", "reason": "queue_backlog"}
    )
    controller(world, (config, MemoryBackend(1))).step()

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"pool": "metrics-pool", **labels})

    assert sample("vidfarm_autoscaler_desired_replicas") == 3
    assert sample("vidfarm_autoscaler_current_replicas") == 1
    assert sample("vidfarm_autoscaler_backlog_seconds") == 0
    after = sample("vidfarm_autoscaler_decisions_total", direction="up", reason="queue_backlog")
    assert after == (before or 0) + 1


def test_changes_log_at_info_steady_state_at_debug(world: World, caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend(0)
    world.queued = 1
    ctl = controller(world, (CPU, backend))
    with caplog.at_level(logging.INFO, logger="autoscaler.controller"):
        ctl.step()
        world.queued, world.running = 0, 1
        world.workers = workers("busy")
        ctl.step()  # 1 running on 1 replica: steady
        ctl.step()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos[0].startswith("pool cpu: up [queue_backlog] scale up 0 -> 1")
    assert len(infos) == 2  # the scale up, then the first "steady"; the repeat stays at DEBUG


def test_duplicate_pool_names_rejected(world: World) -> None:
    with pytest.raises(ValueError, match="unique"):
        controller(world, (CPU, MemoryBackend()), (CPU, MemoryBackend()))


def test_wake_triggers_a_step_well_before_resync() -> None:
    world = World(time.monotonic)
    backend = MemoryBackend(0)
    ctl = Controller([(CPU, backend)], world.observe, resync_s=60.0)
    stop = threading.Event()
    thread = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(world.observed) >= 1, 2.0, "the first pass, at start", every_s=0.005)
        world.queued = 2
        woken_at = time.monotonic()
        ctl.wake()
        wait_until(lambda: backend.calls == [(2, [])], 2.0, "the woken pass to scale", every_s=0.005)
        assert time.monotonic() - woken_at < 0.5
    finally:
        stop.set()
        thread.join(timeout=2.0)
    assert not thread.is_alive()


def test_run_survives_exceptions_and_keeps_resyncing() -> None:
    calls: list[int] = []

    def flaky_observe(config: PoolConfig) -> tuple[Snapshot, list[WorkerRef]]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("redis blip")
        return Snapshot(0.0, 1, 0, 0, 0, 0), []

    backend = MemoryBackend(0)
    ctl = Controller([(CPU, backend)], flaky_observe, resync_s=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: backend.calls == [(1, [])], 2.0, "a pass after the failures", every_s=0.005)
    finally:
        stop.set()
        thread.join(timeout=2.0)
    assert not thread.is_alive()


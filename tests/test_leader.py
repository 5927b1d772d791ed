"""Lease leader election, and "only the leader acts" with two controllers on one API server."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY

from autoscaler.backend import WorkerRef
from autoscaler.cluster import forget_leader_gauges
from autoscaler.controller import Controller
from autoscaler.k8s import KubernetesDeployment
from autoscaler.leader import LeaseElector
from autoscaler.policy import PoolConfig, Snapshot
from tests.conftest import FakeClock
from tests.kube_fake import MICRO_TIME, FakeKube, Request
from vidfarm import metrics as farm_metrics

NS = "vidfarm"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/vidfarm-autoscaler"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        yield server


def elector(fake: FakeKube, identity: str, clock: FakeClock, **kwargs: object) -> LeaseElector:
    return LeaseElector(
        NS, "vidfarm-autoscaler", identity, lease_duration_s=15, api_client=fake.api_client(), clock=clock,
        **kwargs,
    )


def lease_spec(fake: FakeKube) -> dict:
    return fake.leases[(NS, "vidfarm-autoscaler")]["spec"]


def test_first_candidate_creates_the_lease(fake: FakeKube) -> None:
    a = elector(fake, "a", FakeClock())
    assert a.try_acquire_or_renew() is True
    assert a.is_leader
    assert [(r.method, r.path) for r in fake.requests] == [("GET", LEASE), ("POST", LEASES)]
    spec = lease_spec(fake)
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0


def test_holder_renews_with_replace(fake: FakeKube) -> None:
    a = elector(fake, "a", FakeClock())
    a.try_acquire_or_renew()
    first_renew = lease_spec(fake)["renewTime"]

    assert a.try_acquire_or_renew() is True
    assert [(r.method, r.path) for r in fake.requests][-2:] == [("GET", LEASE), ("PUT", LEASE)]
    assert lease_spec(fake)["holderIdentity"] == "a"
    assert lease_spec(fake)["renewTime"] >= first_renew


def test_second_candidate_waits_and_writes_nothing(fake: FakeKube) -> None:
    clock = FakeClock()
    a, b = elector(fake, "a", clock), elector(fake, "b", clock)
    a.try_acquire_or_renew()
    writes_before = fake.writes()

    assert b.try_acquire_or_renew() is False
    assert not b.is_leader
    assert fake.writes() == writes_before


def test_takeover_only_after_a_full_lease_duration_on_the_candidates_clock(fake: FakeKube) -> None:
    clock_a, clock_b = FakeClock(), FakeClock()
    a, b = elector(fake, "a", clock_a), elector(fake, "b", clock_b)
    a.try_acquire_or_renew()
    assert b.try_acquire_or_renew() is False  # b first sees a's record now

    clock_b.now += 14.0
    assert b.try_acquire_or_renew() is False  # a stopped renewing, but not for 15 s yet
    clock_b.now += 1.0
    assert b.try_acquire_or_renew() is True
    assert lease_spec(fake)["holderIdentity"] == "b"
    assert lease_spec(fake)["leaseTransitions"] == 1

    # a wakes up (e.g. after a long GC pause): it sees b's record and steps down.
    assert a.try_acquire_or_renew() is False
    assert not a.is_leader


def test_renewals_restart_the_candidates_wait(fake: FakeKube) -> None:
    clock = FakeClock()
    a, b = elector(fake, "a", clock), elector(fake, "b", clock)
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    for _ in range(5):
        clock.now += 10.0
        assert a.try_acquire_or_renew() is True  # renewTime changes: b restarts its wait
        assert b.try_acquire_or_renew() is False


def test_lost_create_race_is_not_leadership(fake: FakeKube) -> None:
    def rival_creates_first(request: Request) -> None:
        if request.method == "POST" and fake.before_request is not None:
            fake.before_request = None
            elector(fake, "rival", FakeClock()).try_acquire_or_renew()

    fake.before_request = rival_creates_first
    a = elector(fake, "a", FakeClock())
    assert a.try_acquire_or_renew() is False
    assert lease_spec(fake)["holderIdentity"] == "rival"


def test_lost_replace_race_is_not_leadership(fake: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    a = elector(fake, "a", clock)
    a.try_acquire_or_renew()

    def rival_writes_first(request: Request) -> None:
        if request.method == "PUT" and fake.before_request is not None:
            fake.before_request = None
            lease = fake.leases[(NS, "vidfarm-autoscaler")]
            lease["spec"]["holderIdentity"] = "rival"
            lease["metadata"]["resourceVersion"] = "999999"

    fake.before_request = rival_writes_first
    with caplog.at_level(logging.INFO):
        assert a.try_acquire_or_renew() is False
    assert not a.is_leader
    assert "lost the race" in caplog.text
    assert lease_spec(fake)["holderIdentity"] == "rival"


def test_forbidden_lease_logs_rbac_hint(fake: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    fake.forbid("GET", "/leases/")
    with caplog.at_level(logging.ERROR):
        assert elector(fake, "a", FakeClock()).try_acquire_or_renew() is False
    # The same hint as the scaling backend's: one mechanism for every Kubernetes call.
    assert "RBAC forbids 'get' on 'leases' (apiGroup 'coordination.k8s.io') in namespace 'vidfarm'" in caplog.text
    assert 'resources: ["leases"], verbs: ["get"]' in caplog.text


def test_unreachable_api_server_backs_off_like_the_backend(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    with FakeKube() as server:
        a = elector(server, "a", clock)
    with caplog.at_level(logging.WARNING):
        assert a.try_acquire_or_renew() is False
        assert "backing off 0.5s" in caplog.text
        caplog.clear()
        assert a.try_acquire_or_renew() is False  # within the backoff window: no request, no new log
        assert "unreachable" not in caplog.text


WHOLE_SECOND = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def test_timestamps_on_a_whole_second_are_written_with_six_fractional_digits(fake: FakeKube) -> None:
    # datetime.isoformat() drops ".000000", which the API server (and the fake) reject with 400.
    a = elector(fake, "a", FakeClock(), wall_clock=lambda: WHOLE_SECOND)
    assert a.try_acquire_or_renew() is True  # create
    assert a.try_acquire_or_renew() is True  # replace, with the acquireTime read back as a datetime
    spec = lease_spec(fake)
    assert spec["renewTime"] == spec["acquireTime"] == "2025-01-01T12:00:00.000000+00:00"
    assert [(r.method, (r.body or {}).get("spec", {}).get("renewTime")) for r in fake.requests if r.body] == [
        ("POST", "2025-01-01T12:00:00.000000+00:00"), ("PUT", "2025-01-01T12:00:00.000000+00:00"),
    ]
    assert MICRO_TIME.match(spec["renewTime"])


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_release_on_shutdown_hands_over_at_once(fake: FakeKube) -> None:
    clock = FakeClock()
    lost = Counter()
    a, b = elector(fake, "a", clock, on_lost=lost), elector(fake, "b", clock)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False

    a.release()

    assert not a.is_leader and lost.calls == 1
    assert "holderIdentity" not in lease_spec(fake)
    assert lease_spec(fake)["leaseDurationSeconds"] == 1
    # No lease duration to wait: the rival takes over on its next round, with no clock advance.
    assert b.try_acquire_or_renew() is True
    assert lease_spec(fake)["holderIdentity"] == "b"


def test_release_by_a_follower_writes_nothing(fake: FakeKube) -> None:
    clock = FakeClock()
    a, b = elector(fake, "a", clock), elector(fake, "b", clock)
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    writes = fake.writes()
    b.release()
    assert fake.writes() == writes
    assert lease_spec(fake)["holderIdentity"] == "a"


def test_on_lost_runs_once_when_renewals_run_out(caplog: pytest.LogCaptureFixture) -> None:
    clock, lost = FakeClock(), Counter()
    with FakeKube() as server:
        a = elector(server, "a", clock, on_lost=lost)
        assert a.try_acquire_or_renew() is True
    for _ in range(3):
        clock.now += 10.0
        a.try_acquire_or_renew()
    assert not a.is_leader
    assert lost.calls == 1


def test_leader_stops_acting_when_it_cannot_renew() -> None:
    clock = FakeClock()
    with FakeKube() as server:
        a = elector(server, "a", clock)
        assert a.try_acquire_or_renew() is True
    # API server gone: a stays leader while its last renewal is fresh, then stops.
    clock.now += 5.0
    assert a.try_acquire_or_renew() is True
    clock.now += 10.0
    assert a.try_acquire_or_renew() is False
    assert not a.is_leader


# -- two controllers, one cluster --------------------------------------------------------------------


class StaticObserver:
    """Five queued jobs, no workers yet: every replica of the autoscaler wants to scale up."""

    def __call__(self, config: PoolConfig) -> tuple[Snapshot, list[WorkerRef]]:
        return Snapshot(now=0.0, queued_jobs=5, running_jobs=0, idle_workers=0, busy_workers=0,
                        current_replicas=0), []  # fmt: skip


def test_only_the_leader_scales(fake: FakeKube) -> None:
    fake.add_deployment(NS, "worker-cpu", [])
    config = PoolConfig("cpu", ("cpu",), max_replicas=3)
    clock_a, clock_b = FakeClock(), FakeClock()
    controllers = {
        name: Controller(
            [(config, KubernetesDeployment(NS, "worker-cpu", api_client=fake.api_client()))],
            StaticObserver(),
            leader=elector(fake, name, clock),
            clock=clock,
        )
        for name, clock in (("a", clock_a), ("b", clock_b))
    }
    scale_patch = ("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/worker-cpu/scale")

    assert controllers["a"].step()["cpu"].desired == 3
    assert controllers["b"].step() == {}  # follower: no decision, no request but the lease read
    assert fake.writes().count(scale_patch) == 1
    assert fake.replicas(NS, "worker-cpu") == 3

    # The leader dies; after a lease duration the follower takes over and acts.
    fake.add_deployment(NS, "worker-cpu", [])  # someone reset replicas to 0
    clock_b.now += 10.0
    assert controllers["b"].step() == {}  # a's record unchanged for 10 s only: still a's lease
    clock_b.now += 5.0
    assert controllers["b"].step()["cpu"].desired == 3
    assert fake.writes().count(scale_patch) == 2
    assert lease_spec(fake)["holderIdentity"] == "b"


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_demoted_autoscaler_stops_exporting_pool_and_queue_gauges(fake: FakeKube) -> None:
    fake.add_deployment(NS, "worker-cpu", [])
    config = PoolConfig("cpu", ("cpu",), max_replicas=3)
    clock = FakeClock()

    def controller(name: str, on_lost: Callable[[], None]) -> Controller:
        backend = KubernetesDeployment(NS, "worker-cpu", api_client=fake.api_client())
        leader = elector(fake, name, clock, on_lost=on_lost)
        return Controller([(config, backend)], StaticObserver(), leader=leader, clock=clock)

    a = controller("a", forget_leader_gauges)
    a.step()
    farm_metrics.QUEUE_JOBS.labels("cpu", "queued").set(5)  # what a's observer exports as leader
    assert gauge("vidfarm_autoscaler_desired_replicas", pool="cpu") == 3

    # a stalls; b takes the lease after a full duration, and a notices on its next round.
    b = controller("b", lambda: None)
    b.step()
    clock.now += 15.0
    assert b.step()["cpu"].desired == 3
    assert a.step() == {}

    assert gauge("vidfarm_autoscaler_desired_replicas", pool="cpu") is None
    assert gauge("vidfarm_autoscaler_current_replicas", pool="cpu") is None
    assert gauge("vidfarm_autoscaler_backlog_seconds", pool="cpu") is None
    assert gauge("vidfarm_queue_jobs", queue="cpu", state="queued") is None

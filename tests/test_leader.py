"""Lease leader election, and "only the leader acts" with two controllers on one API server."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from autoscaler.backend import WorkerRef
from autoscaler.controller import Controller
from autoscaler.k8s import KubernetesDeployment
from autoscaler.leader import AlwaysLeader, LeaseElector
from autoscaler.policy import PoolConfig, Snapshot
from tests.kube_fake import FakeKube, Request

NS = "vidfarm"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/vidfarm-autoscaler"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        yield server


def elector(fake: FakeKube, identity: str, clock: FakeClock) -> LeaseElector:
    return LeaseElector(
        NS, "vidfarm-autoscaler", identity, lease_duration_s=15, api_client=fake.api_client(), clock=clock
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
    assert "RBAC forbids lease access in namespace 'vidfarm'" in caplog.text
    assert 'resources: ["leases"]' in caplog.text


def test_leader_stops_acting_when_it_cannot_renew(caplog: pytest.LogCaptureFixture) -> None:
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


def test_always_leader() -> None:
    leader = AlwaysLeader()
    assert leader.try_acquire_or_renew() is True
    assert leader.is_leader


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
